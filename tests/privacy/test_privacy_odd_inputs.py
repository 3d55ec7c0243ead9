"""Odd inputs to the privacy library API: each gets a one-line error naming what is wrong,
never a hang, a deep traceback, a silent wrong result, or a ledger that loses a spend."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from trustgain.errors import ConfigError, InputError
from trustgain.privacy import accounting, membership, memorization
from trustgain.privacy.ledger import Ledger, LedgerError
from trustgain.privacy.redact import RedactPII, redact

# --- ledger ---------------------------------------------------------------------------------


def _ledger(tmp_path: Path, name: str = "l.json", epsilon: float = 1.0) -> Ledger:
    return Ledger.create(tmp_path / name, dataset="faces", epsilon=epsilon, delta=1e-5)


@pytest.mark.parametrize("field", ["what", "accountant"])
@pytest.mark.parametrize("value", [None, b"bytes", 3])
def test_charge_with_a_non_text_label_is_refused_and_leaves_the_ledger_readable(
        tmp_path: Path, field: str, value: object) -> None:
    book = _ledger(tmp_path)
    kw = {"what": "run", "accountant": "rdp", field: value}
    with pytest.raises(LedgerError, match=field):
        book.charge(epsilon=0.1, delta=0, **kw)  # type: ignore[arg-type]
    book.charge(what="next", accountant="rdp", epsilon=0.1, delta=0)  # still usable
    assert book.spent() == (0.1, 0)


def test_create_refuses_a_non_text_dataset(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="dataset must be a str"):
        Ledger.create(tmp_path / "l.json", dataset=None, epsilon=1, delta=0)  # type: ignore[arg-type]
    assert not (tmp_path / "l.json").exists()


def test_numpy_amounts_are_stored_as_plain_numbers(tmp_path: Path) -> None:
    book = _ledger(tmp_path)
    spend = book.charge(what="r", accountant="rdp", epsilon=np.float32(0.25), delta=np.float64(0))
    assert type(spend.epsilon) is float and type(spend.delta) is float
    assert book.spent() == (0.25, 0.0)


def test_an_int_too_large_for_a_float_is_a_ledger_error(tmp_path: Path) -> None:
    book = _ledger(tmp_path)
    with pytest.raises(LedgerError, match="finite"):
        book.charge(what="r", accountant="rdp", epsilon=10**400, delta=0)


def test_a_spend_through_a_symlink_is_recorded_in_the_linked_ledger(tmp_path: Path) -> None:
    book = _ledger(tmp_path)
    link = tmp_path / "link.json"
    link.symlink_to(book.path)
    Ledger(link).charge(what="via link", accountant="rdp", epsilon=0.5, delta=0)
    assert link.is_symlink()  # not replaced by a copy that would split the budget in two
    assert book.spent() == (0.5, 0)
    with pytest.raises(Exception, match="exceeded"):
        Ledger(link).charge(what="again", accountant="rdp", epsilon=0.6, delta=0)


def test_charging_a_missing_ledger_leaves_no_folders_or_lock_files(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no privacy ledger"):
        Ledger(tmp_path / "a" / "b.json").charge(what="r", accountant="rdp", epsilon=0, delta=0)
    assert list(tmp_path.iterdir()) == []


def test_a_duplicated_key_in_a_ledger_is_refused(tmp_path: Path) -> None:
    book = _ledger(tmp_path)
    book.charge(what="r", accountant="rdp", epsilon=0.5, delta=0)
    text = book.path.read_text()
    book.path.write_text(text.rstrip().rstrip("}") + ', "spends": []}\n')  # hides the spend
    with pytest.raises(LedgerError, match="appears twice"):
        book.spent()


def test_a_ledger_with_another_composition_is_refused(tmp_path: Path) -> None:
    book = _ledger(tmp_path)
    doc = json.loads(book.path.read_text())
    doc["composition"] = "rdp"
    book.path.write_text(json.dumps(doc))
    with pytest.raises(LedgerError, match="composition"):
        book.charge(what="r", accountant="rdp", epsilon=0.1, delta=0)


def _charge(args: tuple[str, int]) -> None:
    Ledger(args[0]).charge(what=f"w{args[1]}", accountant="rdp", epsilon=0.001, delta=0)


def test_two_processes_charging_at_once_through_a_file_and_its_link_lose_no_spend(
        tmp_path: Path) -> None:
    book = _ledger(tmp_path, epsilon=10.0)
    link = tmp_path / "link.json"
    link.symlink_to(book.path)
    paths = [str(book.path if i % 2 else link) for i in range(40)]
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(_charge, [(p, i) for i, p in enumerate(paths)])
    assert len(book.spends()) == 40 and link.is_symlink()


# --- accounting -----------------------------------------------------------------------------

_ACC = {"accountant": "rdp", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10,
        "delta": 1e-5}


@pytest.mark.parametrize("change", [{"noise_multiplier": float("nan")},
                                    {"noise_multiplier": float("inf")},
                                    {"noise_multiplier": None}, {"steps": 10.5},
                                    {"steps": True}, {"steps": "10"}])
def test_epsilon_spent_refuses_odd_numbers_instead_of_hanging(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(change))):
        accounting.epsilon_spent(**{**_ACC, **change})  # type: ignore[arg-type]


@pytest.mark.parametrize("tol", [float("nan"), -1.0, 0.0])
def test_noise_for_epsilon_refuses_a_bad_tolerance(tol: float) -> None:
    with pytest.raises(ConfigError, match="epsilon_tolerance"):
        accounting.noise_for_epsilon(accountant="rdp", target_epsilon=1.0, sample_rate=0.1,
                                     steps=10, delta=1e-5, epsilon_tolerance=tol)


# --- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, b"mail john@example.com", 5])
def test_redact_wants_text(text: object) -> None:
    with pytest.raises(TypeError, match="text must be a str"):
        redact(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("region", ["XX", "us", None])
def test_redact_refuses_an_unknown_region_instead_of_masking_no_phones(region: object) -> None:
    with pytest.raises(ValueError, match="region") as info:
        redact("call (415) 555-2671", region=region)  # type: ignore[arg-type]
    assert "555" not in str(info.value)


def test_redact_takes_one_kind_given_bare() -> None:
    assert redact("a@b.com 415-555-2671", kinds="EMAIL")[0] == "[EMAIL] 415-555-2671"  # type: ignore[arg-type]
    assert RedactPII(kinds="EMAIL").kinds == ("EMAIL",)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kinds"):
        RedactPII(kinds=None)  # type: ignore[arg-type]


def test_a_truncated_pem_key_is_masked_with_its_body() -> None:
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nabcdEFGHijklMNOP1234\nAB=="
    new, counts = redact(f"key: -----BEGIN PRIVATE KEY-----\n{body} thanks")
    assert new == "key: [SECRET] thanks" and counts == {"SECRET": 1}


def test_many_pem_headers_are_redacted_in_linear_time() -> None:
    text = "-----BEGIN PRIVATE KEY-----" * 20000  # quadratic before: ~70 s
    new, counts = redact(text, kinds=("SECRET",))
    assert counts["SECRET"] == 20000 and "BEGIN" not in new


def test_pii_in_odd_unicode_is_masked_and_kept_out_of_errors() -> None:
    text = "\u202ejohn@example.com\u202c\x00🙂 4111 1111 1111 1111"
    new, counts = redact(text)
    assert "john" not in new and "4111" not in new and counts == {"EMAIL": 1, "CARD": 1}
    with pytest.raises(ValueError) as info:
        redact(text, kinds=("EMAIL", "NAME"))
    assert "john" not in str(info.value)


# --- memorization ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    index = memorization.calibrate(memorization.build_index(imgs, reference=imgs, k=3), imgs,
                                   target_rate=0.2)
    path = index.save(tmp_path_factory.mktemp("idx") / "i.npz")
    meta = {"format": memorization.FORMAT, "size": 32, "k": 3, "channels": "max",
            "threshold": 0.5, "calibration": None}
    return path, meta


def _npz(path: Path, meta: object, **arrays: np.ndarray) -> Path:
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


@pytest.mark.parametrize("change, arrays, match", [
    ({"k": 0}, {}, "k 0"),
    ({"size": None}, {}, "size None"),
    ({"threshold": "x"}, {}, "threshold"),
    ({"threshold": float("nan")}, {}, "threshold"),
    ({"channels": "hue"}, {}, "channels"),
    ({}, {"features": np.full((2, 1024), np.nan)}, "NaN"),
    ({}, {"features": np.zeros((2, 7))}, r"\(N, 1024\)"),
    ({}, {"features": np.zeros((0, 1024))}, "non-empty"),
])
def test_a_damaged_index_is_refused_not_trusted(
        tmp_path: Path, saved_index: tuple[Path, dict[str, object]],
        change: dict[str, object], arrays: dict[str, np.ndarray], match: str) -> None:
    meta = {**saved_index[1], **change}
    arrays = {"features": np.zeros((2, 1024), np.float32), **arrays}
    with pytest.raises(InputError, match=match):
        memorization.load_index(_npz(tmp_path / "x.npz", meta, **arrays))


def test_index_meta_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a memorization index"):
        memorization.load_index(_npz(tmp_path / "x.npz", [1], features=np.zeros((2, 1024))))


@pytest.mark.parametrize("cut", [0, 4, 100])
def test_a_truncated_or_empty_index_file_is_an_input_error(
        tmp_path: Path, saved_index: tuple[Path, dict[str, object]], cut: int) -> None:
    path = tmp_path / "t.npz"
    path.write_bytes(saved_index[0].read_bytes()[:cut])
    with pytest.raises(InputError, match="not a memorization index"):
        memorization.load_index(path)


def test_a_pickled_array_in_an_index_is_not_loaded(tmp_path: Path,
                                                   saved_index: tuple[Path, dict]) -> None:
    path = _npz(tmp_path / "p.npz", saved_index[1],
                features=np.array([{"x": 1}], dtype=object))
    with pytest.raises(InputError, match="allow_pickle"):
        memorization.load_index(path)


def test_features_refuse_nan_images_and_odd_shapes() -> None:
    with pytest.raises(InputError, match="NaN"):
        memorization.features(np.full((16, 16, 3), np.nan))
    with pytest.raises(InputError, match="shape"):
        memorization.features(np.zeros((16, 16, 5), np.uint8))
    assert memorization.features(np.zeros((16, 16), np.uint8)).shape == (1, 1024)  # one grey


# --- membership -----------------------------------------------------------------------------


@pytest.mark.parametrize("losses", [np.zeros((3, 2)), -np.ones((3, 2)),
                                    np.full((3, 2), np.nan), np.ones(3)])
def test_scores_refuse_losses_that_are_not_positive_or_not_2d(losses: np.ndarray) -> None:
    with pytest.raises(InputError, match="losses"):
        membership.scores(losses)


@pytest.mark.parametrize("kw, match", [({"fpr": 2}, "fpr"), ({"fpr": float("nan")}, "fpr"),
                                       ({"confidence": 2}, "confidence"),
                                       ({"n_resamples": 0}, "n_resamples")])
def test_evaluate_refuses_odd_settings(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        membership.evaluate(np.arange(5.0), np.arange(5.0), **kw)  # type: ignore[arg-type]


def test_evaluate_refuses_nan_scores() -> None:
    with pytest.raises(InputError, match="NaN"):
        membership.evaluate(np.array([np.nan, 1, 2]), np.arange(3.0), n_resamples=10)


def test_report_from_losses_checks_columns_against_timesteps() -> None:
    with pytest.raises(InputError, match="3 timesteps"):
        membership.report_from_losses(np.ones((3, 2)), np.ones((3, 2)), timesteps=(1, 2, 3))


def test_audit_set_metadata_that_is_not_utf8_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "metadata.jsonl").write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputError, match="UTF-8"):
        membership.load_audit_set(tmp_path)



def _png(path: Path, value: int = 0) -> None:
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.mark.parametrize("line, match", [
    ('{"file_name": "../outside.png"}', "points outside"),
    ('{"file_name": "/etc/passwd"}', "points outside"),
    ('{"file_name": "link.png"}', "points outside"),
    ('{"file_name": 3}', "non-empty string"),
    ('{"file_name": ""}', "non-empty string"),
    ('["a.png"]', "not a JSON object"),
    ('{"file_name": "a.png", "text": 5}', "not a string"),
    ('{"file_name": "a.png"}\n{"file_name": "./a.png"}', "listed again"),
])
def test_audit_set_metadata_cannot_leave_the_folder_or_list_an_image_twice(
    tmp_path: Path, line: str, match: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _png(data / "a.png")
    _png(tmp_path / "outside.png", 255)
    (data / "link.png").symlink_to(tmp_path / "outside.png")
    (data / "metadata.jsonl").write_text(line + "\n")
    with pytest.raises(InputError, match=match):
        membership.load_audit_set(data)


def test_audit_set_metadata_reads_names_and_optional_captions(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 10)
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "b.png", 20)
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "sub/b.png", "text": "two"}\n\n{"file_name": "a.png"}\n')
    audit = membership.load_audit_set(tmp_path)
    assert audit.names == ["sub/b.png", "a.png"] and audit.captions == ["two", ""]
    assert audit.images[:, 0, 0, 0].tolist() == [20, 10]


def test_finetune_metadata_needs_a_caption_and_stays_in_its_folder(tmp_path: Path) -> None:
    from trustgain.privacy.finetune_data import load_records

    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    meta = tmp_path / "metadata.jsonl"
    meta.write_text('{"file_name": "a.png", "text": "x"}\n{"file_name": "b.png"}\n')
    with pytest.raises(InputError, match=r"metadata.jsonl:2: 'text' is missing"):
        load_records(tmp_path, resolution=8)
    meta.write_text('{"file_name": "a.png", "text": "x"}\n{"file_name": "a.png", "text": "y"}\n')
    with pytest.raises(InputError, match="listed again"):
        load_records(tmp_path, resolution=8)
    meta.write_bytes(b'{"file_name": "a.png", "text": "\xff"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        load_records(tmp_path, resolution=8)
    meta.write_text('{"file_name": "a.png", "text": "x"}\n{"file_name": "b.png", "text": "y"}\n')
    images, captions = load_records(tmp_path, resolution=8)
    assert images.shape == (2, 8, 8, 3) and captions == ["x", "y"]


def test_audit_set_metadata_with_a_line_separator_inside_a_caption(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": "one\u2028two"}, ensure_ascii=False) + "\n",
        encoding="utf-8")
    assert membership.load_audit_set(tmp_path).captions == ["one\u2028two"]
