"""`make bench`: beep-mail measured beside the systems people would use instead.

Every figure is measured again in each run, next to its baseline, because
absolute numbers drift from run to run and from machine to machine; what the
results state is the ratio. `docs/performance.md` explains what each figure
means and what limits it.

Modules: `run` (the command and the report), `site` (gateway sites and
processes), `load` (the SMTP clients, a child process), `sink` (the bare
aiosmtpd baseline, a child process), `postfix` (a private Postfix instance),
`cost` (OpenPGP per message), `profile` (py-spy over the submission path).
"""
