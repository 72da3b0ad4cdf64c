"""The one exception type for user mistakes.

Anything a user can get wrong (a config field, a path, a dataset name) raises
`UserError` with a message that names the field or file, says what was expected
and how to fix it. The binaries print the message alone and exit non-zero; any
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A mistake in the user's input: printed without a traceback."""
