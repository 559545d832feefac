"""Settings: defaults < TOML file < SAMARKIV_* environment < command-line options."""

from __future__ import annotations

from pathlib import Path

import pytest

from samarkiv.config import ConfigError, DuplicatePolicy, RemoteNode, load_settings


def test_embedded_defaults_are_safe(monkeypatch):
    for name in ("SAMARKIV_HOST", "SAMARKIV_DATA", "SAMARKIV_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.host == "127.0.0.1"  # never listen on every interface by default
    assert (settings.dicom_port, settings.http_port, settings.aet) == (11112, 8080, "SAMARKIV")
    assert settings.resolved_index_url.startswith("sqlite:///")
    assert settings.resolved_index_url.endswith("samarkiv-data/index.sqlite")


def test_file_then_environment_then_options(tmp_path: Path, monkeypatch):
    config = tmp_path / "samarkiv.toml"
    config.write_text(
        'aet = "FROMFILE"\ndicom_port = 2000\nhttp_port = 2001\nduplicate_policy = "keep-both"\n'
        '[[nodes]]\naet = "PACS"\nhost = "127.0.0.1"\nport = 104\n'
    )
    monkeypatch.setenv("SAMARKIV_DICOM_PORT", "3000")
    monkeypatch.setenv("SAMARKIV_AET", "FROMENV")
    settings = load_settings(config, aet="FROMCLI", http_port=None)
    assert settings.aet == "FROMCLI"
    assert settings.dicom_port == 3000
    assert settings.http_port == 2001
    assert settings.duplicate_policy is DuplicatePolicy.KEEP_BOTH
    assert settings.nodes == (RemoteNode("PACS", "127.0.0.1", 104),)


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "blue"\n', "unknown setting"),
        ('dicom_port = "many"\n', "dicom_port"),
        ("aet = \n", "cannot read config file"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, message: str):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)
