"""Programs the binary runs, by `config.program`: each has `run(config, workdir)`."""

PROGRAMS = {
    "asif": "zoomshot_jax.programs.asif",
    "demo": "zoomshot_jax.demo.run",
    "distill": "zoomshot_jax.programs.distill",
    "vl_finetune": "zoomshot_jax.programs.vl_finetune",
    "zeroshot_eval": "zoomshot_jax.programs.zeroshot_eval",
    "zoomshot": "zoomshot_jax.programs.zoomshot",
}
