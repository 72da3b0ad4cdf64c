"""Programs the binary runs, by `config.program`: each has `run(config, workdir)`."""

PROGRAMS = {
    "zeroshot_eval": "zoomshot_jax.programs.zeroshot_eval",
}
