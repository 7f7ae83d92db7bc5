"""The one exception type a user can act on."""


class UserError(Exception):
  """Bad input the user can fix: the CLI prints the message on one line and exits with status 2."""
