"""The shared prior plumbing: folder fingerprints and the flag / environment resolution with clear errors."""

import hashlib

import pytest

from gfbench.priors import PriorError, folder_fingerprint, resolve_prior_folder


def test_fingerprint_hashes_every_file_and_skips_hidden(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".cache").write_bytes(b"x")
    assert folder_fingerprint(tmp_path) == {
        "config.json": hashlib.sha256(b"{}").hexdigest(),
        "sub/w.bin": hashlib.sha256(b"\x00\x01").hexdigest(),
    }


def test_flag_wins_over_environment(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("GFBENCH_TEST_PRIOR", str(other))
    assert resolve_prior_folder(tmp_path, env_var="GFBENCH_TEST_PRIOR", what="p", flag="--p") == tmp_path
    assert resolve_prior_folder(None, env_var="GFBENCH_TEST_PRIOR", what="p", flag="--p") == other


@pytest.mark.parametrize("case", ["unset", "not-a-folder", "missing-file"])
def test_missing_prior_is_a_clear_error(tmp_path, monkeypatch, case):
    monkeypatch.delenv("GFBENCH_TEST_PRIOR", raising=False)
    value = {"unset": None, "not-a-folder": tmp_path / "nope", "missing-file": tmp_path}[case]
    with pytest.raises(PriorError) as info:
        resolve_prior_folder(value, env_var="GFBENCH_TEST_PRIOR", what="depth prior", flag="--depth-prior",
                             required_files=("config.json",))
    message = str(info.value)
    assert message.startswith("depth prior:")
    expected = {"unset": "GFBENCH_TEST_PRIOR", "not-a-folder": "nope is not a folder", "missing-file": "config.json"}
    assert expected[case] in message
