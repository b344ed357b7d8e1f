"""SMTP: the submission and inbound listeners, delivery to the next hop, DSNs.

Protocol code lives here; policy decisions come from `beep_mail.policy`, the
durable commit from `beep_mail.pipeline` and `beep_mail.store`.
"""
