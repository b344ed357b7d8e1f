"""Settings: environment overrides and errors that name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from beep_mail import config


def _file(tmp_path: Path, text: str = "") -> Path:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "beepmail.toml"
    path.write_text(text)
    return path


def test_environment_overrides_nested_keys(tmp_path: Path) -> None:
    path = _file(tmp_path, '[smtp.submission]\nlisten = "127.0.0.1:1"\n')
    settings = config.load(path, {"BEEPMAIL_SMTP__SUBMISSION__LISTEN": "0.0.0.0:587",
                                  "BEEPMAIL_DATABASE__URL": "sqlite:///var/x.db",
                                  "BEEPMAIL_TEST_POSTGRES_URL": "ignored"})
    assert settings.smtp.submission.listen == "0.0.0.0:587"
    assert settings.database_url == f"sqlite:///{tmp_path / 'var/x.db'}"


@pytest.mark.parametrize("text, key", [
    ('[archive]\nretention = {"peer.gov.example:sideways" = 10}\n', "archive.retention"),
    ('[archive]\nretention = {"*.gov.example:inbound" = 10}\n', "archive.retention"),
    ('[archive]\nretention = {"peer.gov.example:inbound" = 0}\n', "archive.retention"),
    ('[smtp]\nmax_recipients = "many"\n', "smtp.max_recipients"),
    ('[smtp]\nno_such_key = 1\n', "smtp.no_such_key"),
])
def test_a_bad_setting_names_its_key_and_file(tmp_path: Path, text: str,
                                             key: str) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, {})
    assert str(path) in str(caught.value) and key in str(caught.value)


def test_retention_rules_that_are_well_formed_load(tmp_path: Path) -> None:
    path = _file(tmp_path, '[archive]\nretention = {"*:*" = 3650, '
                           '"peer.gov.example:inbound" = 7300}\n')
    assert config.load(path, {}).archive.retention["peer.gov.example:inbound"] == 7300
