"""`python -m beep_mail ...` is the same as `beepmail ...`."""

from beep_mail.cli.main import run

run()
