from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from trustgain import KeyRing, wrap
from trustgain.watermark.latent import (
    LatentMark,
    LatentReading,
    bits_to_hex,
    counter_nonce,
    keystream,
    latent_key,
    marked_latents,
    payload_from_record_id,
    read_latent_mark,
)
from trustgain.watermark.latent_invert import ddim_invert

RECORD_ID = "0123456789abcdef0123456789abcdef"
SHAPE = (4, 8, 8)


def _ring(seed: int) -> KeyRing:
    """Fixed keys, so statistical tests are deterministic rather than flaky."""
    signing = Ed25519PrivateKey.from_private_bytes(bytes([seed + 1]) * 32)
    return KeyRing(master_secret=bytes([seed]) * 32, signing_key=signing)


@pytest.fixture(scope="module")
def key():
    return latent_key(_ring(1))


@pytest.fixture(scope="module")
def wrong_key():
    return latent_key(_ring(2))


def _marked(key, count: int, start: int = 0):
    nonces = [counter_nonce(key, c) for c in range(start, start + count)]
    payload = payload_from_record_id(RECORD_ID, 64)
    latents = marked_latents(key, nonces, payload, (count, *SHAPE), salt=RECORD_ID.encode())
    return latents, nonces, bits_to_hex(payload)


def test_marked_latents_are_exactly_standard_normal(key):
    z, nonces, _ = _marked(key, 200)
    values = z.flatten().double().numpy()
    assert stats.kstest(values, "norm").pvalue > 0.01
    # each half is a half-normal: the sign is the encrypted bit, the magnitude untouched
    encrypted = np.concatenate([keystream(key, n, 256) for n in nonces])
    bit_of_sign = (values > 0).astype(np.uint8)
    for half in (0, 1):
        magnitudes = np.abs(values[bit_of_sign == half])
        assert stats.kstest(magnitudes, "halfnorm").pvalue > 0.01
    # keystream alone is balanced; signs agree with it only where payload bits are 0 (~half)
    assert abs(encrypted.mean() - 0.5) < 0.02
    assert abs((bit_of_sign == encrypted).mean() - 0.5) < 0.05


def test_reads_its_own_latents_perfectly(key):
    z, nonces, payload = _marked(key, 8, start=40)
    known = read_latent_mark(z, key, nonces=nonces, expected_payload=payload)
    assert all(r.detected and r.matches == r.n and r.bit_accuracy == 1.0 for r in known)
    plain = read_latent_mark(z, key, nonces=nonces, expected_payload=payload, levels=1)
    assert all(r.matches == r.n == 256 and r.p_value == 2.0**-256 for r in plain)
    assert all(r.payload == payload == RECORD_ID[:16] for r in known)
    blind = read_latent_mark(z, key, nonce_space=256)
    assert [r.nonce_index for r in blind] == list(range(40, 48))
    assert all(r.detected and r.payload == payload and r.statistic == "fold" for r in blind)
    assert all(r.p_value < 1e-30 and r.tries == 256 for r in blind)


def test_an_image_may_be_read_against_each_nonce_of_its_record(key):
    from trustgain.watermark.latent_stats import sidak

    z, nonces, payload = _marked(key, 3, start=10)
    alone = read_latent_mark(z, key, nonces=nonces, expected_payload=payload, levels=1)
    # each image against all three nonces of a three-output record: its own one wins
    each = read_latent_mark(z, key, nonces=[nonces] * 3, expected_payload=payload, levels=1)
    assert [r.nonce_index for r in each] == [0, 1, 2]
    assert all(r.tries == 3 and r.detected for r in each)
    assert all(e.p_value == sidak(a.p_value, 3) and e.matches == a.matches
               for a, e in zip(alone, each, strict=True))
    # a clean latent against several nonces: the correction keeps it a p-value
    clean = torch.from_numpy(np.random.default_rng(5).standard_normal((200, *SHAPE)))
    p = np.array([r.p_value for r in read_latent_mark(
        clean, key, nonces=[nonces] * 200, expected_payload=payload, levels=1)])
    assert (p <= 0.2).mean() <= 0.2 + 3 * np.sqrt(0.2 / 200) and (p <= 0.5).mean() > 0.3
    with pytest.raises(ValueError, match="list of recorded nonces is empty"):
        read_latent_mark(z[:1], key, nonces=[[]], expected_payload=payload)


def test_mark_survives_the_tiny_pipelines_own_denoise_and_inversion(sd_pipe, key):
    z, nonces, payload = _marked(key, 4)
    out = sd_pipe(
        "", latents=z, num_inference_steps=10, height=16, width=16, guidance_scale=1.0,
        num_images_per_prompt=4, output_type="latent",
    ).images
    inverted = ddim_invert(sd_pipe, out, num_inference_steps=10)
    readings = read_latent_mark(inverted, key, nonces=nonces, expected_payload=payload)
    assert all(r.detected and r.bit_accuracy == 1.0 for r in readings)
    assert all(r.detected for r in read_latent_mark(inverted, key, nonce_space=256))


def test_wrong_key_and_clean_latents_give_null_p_values(key, wrong_key):
    z, nonces, payload = _marked(key, 300)
    clean = torch.from_numpy(np.random.default_rng(0).standard_normal((300, *SHAPE)))
    for latents, k in ((z, wrong_key), (clean, key)):
        p = np.array([r.p_value for r in read_latent_mark(
            latents, k, nonces=nonces, expected_payload=payload)])
        assert not any(p <= 1e-6)
        for alpha in (0.05, 0.2, 0.5):  # discrete p-values: P(p <= alpha) <= alpha
            assert (p <= alpha).mean() <= alpha + 3 * np.sqrt(alpha / len(p))
        assert (p <= 0.5).mean() > 0.3  # and not degenerate
        blind = read_latent_mark(latents[:40], k, nonce_space=64)
        assert not any(r.detected for r in blind)


@pytest.mark.parametrize("levels", [1, 3])
def test_null_laws_are_exact(levels):
    """Both null laws against brute-force enumeration of every sign pattern."""
    from trustgain.watermark.latent_stats import fold_sf, matches_sf, rank_weights

    bit_of = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    w = rank_weights(np.random.default_rng(1).random(11), np.ones(11, bool), levels)
    top = int(w.sum())
    fold, match = np.zeros(top + 1), np.zeros(top + 1)
    for bits in itertools.product((0, 1), repeat=11):
        d = np.array(bits)
        match[int((w * d).sum())] += 1
        fold[sum(max((w * d)[bit_of == j].sum(), (w * (1 - d))[bit_of == j].sum())
                 for j in range(3))] += 1
    for counts, got in ((match, matches_sf(w)), (fold, fold_sf(w, bit_of, 3))):
        brute = np.cumsum(counts[::-1])[::-1] / 2**11
        assert np.allclose(got, brute)
    if levels == 1:
        from scipy.stats import binom

        assert np.allclose(matches_sf(w), binom.sf(np.arange(12) - 1, 11, 0.5))


def test_a_shared_nonce_counter_does_not_share_magnitudes(key):
    """Two records that drew the same counter: same keystream, independent magnitudes."""
    nonce = [counter_nonce(key, 7)]
    pay = payload_from_record_id(RECORD_ID, 64)
    a = marked_latents(key, nonce, pay, (1, *SHAPE), salt=b"record-a").flatten().numpy()
    b = marked_latents(key, nonce, pay, (1, *SHAPE), salt=b"record-b").flatten().numpy()
    assert np.array_equal(np.sign(a), np.sign(b))  # same payload, same nonce: same signs
    assert abs(np.corrcoef(np.abs(a), np.abs(b))[0, 1]) < 0.25


def test_same_key_other_nonce_gives_uncorrelated_signs(key):
    a, _, _ = _marked(key, 100, start=0)
    b, _, _ = _marked(key, 100, start=100)
    sa = np.sign(a.flatten().numpy())
    sb = np.sign(b.flatten().numpy())
    assert abs(np.corrcoef(sa, sb)[0, 1]) < 4 / np.sqrt(sa.size)
    same, _, _ = _marked(key, 100, start=0)
    assert torch.equal(a, same)  # same nonce, same latents: the record replays them


def test_stage_marks_the_generation_and_records_no_secret(sd_pipe):
    ring = _ring(3)
    pipe = wrap(sd_pipe, [LatentMark()], keyring=ring)
    art = pipe("", seed=3, num_inference_steps=4, height=16, width=16, num_images_per_prompt=2)
    record = art.record.record
    (stage,) = record["stages"]
    params = stage["params"]
    assert stage["name"] == "watermark.latent" and stage["applied"]
    assert params["payload"] == record["record_id"][:16]
    assert params["key_id"] == latent_key(ring).key_id and params["shape"] == [2, 4, 8, 8]
    assert len(set(params["nonces"])) == 2 and params["replication"] == 4
    key = latent_key(ring)
    assert [counter_nonce(key, c).hex() for c in params["nonce_counters"]] == params["nonces"]
    text = json.dumps(record)
    for secret in (key.material, ring._master):
        assert secret.hex() not in text and secret.hex()[:16] not in text
    # the recorded nonces and payload redraw exactly the latents the generator received
    nonces = [bytes.fromhex(n) for n in params["nonces"]]
    payload = payload_from_record_id(record["record_id"], 64)
    latents = marked_latents(key, nonces, payload, (2, *SHAPE),
                             salt=record["record_id"].encode())
    replay = sd_pipe("", latents=latents, num_inference_steps=4, height=16, width=16,
                     num_images_per_prompt=2, generator=torch.Generator().manual_seed(3)).images
    assert [x.tobytes() for x in replay] == [x.tobytes() for x in art.images]


def test_stage_settings_are_checked(sd_pipe):
    with pytest.raises(ValueError, match="payload_bits"):
        LatentMark(payload_bits=0)
    with pytest.raises(ValueError, match="nonce_space"):
        LatentMark(nonce_space=-1)
    art = wrap(sd_pipe, [LatentMark(payload_bits=32, nonce_space=0)], keyring=_ring(4))(
        "", seed=1, num_inference_steps=2, height=16, width=16)
    params = art.record.record["stages"][0]["params"]
    assert params["nonce_counters"] == [None] and len(params["nonces"][0]) == 24
    assert params["payload"] == art.record.record["record_id"][:8]


def test_detect_with_record_checks_the_key_and_reads_every_output(sd_pipe):
    from trustgain.watermark.latent_invert import detect_with_record

    ring = _ring(5)
    art = wrap(sd_pipe, [LatentMark()], keyring=ring)(
        "", seed=2, num_inference_steps=3, height=16, width=16, num_images_per_prompt=2)
    record = art.record.record
    readings = detect_with_record(art.images, sd_pipe, latent_key(ring), record)
    assert [r.statistic for r in readings] == ["matches", "matches"]
    assert all(0 < r.p_value <= 1 and r.n == 256 * 2.5 for r in readings)
    with pytest.raises(ValueError, match="marked under"):
        detect_with_record(art.images, sd_pipe, latent_key(_ring(6)), record)
    with pytest.raises(ValueError, match=r"no 'watermark\.latent' stage"):
        detect_with_record(art.images, sd_pipe, latent_key(ring), {"stages": []})


def test_mask_restricts_the_statistic_and_keeps_it_exact(key, wrong_key):
    z, nonces, payload = _marked(key, 50)
    mask = np.zeros(256, dtype=bool)
    mask[:100] = True
    damaged = z.clone().flatten(1)
    damaged[:, 100:] = -damaged[:, 100:]  # everything outside the mask flipped
    damaged = damaged.reshape(z.shape)
    full = read_latent_mark(damaged, key, nonces=nonces, expected_payload=payload)
    masked = read_latent_mark(damaged, key, nonces=nonces, expected_payload=payload, mask=mask,
                              levels=1)
    assert not any(r.detected for r in full)
    assert all(r.detected and r.n == r.matches == 100 for r in masked)
    null = read_latent_mark(z, wrong_key, nonces=nonces, expected_payload=payload, mask=mask)
    assert all(r.n == 250 and not r.detected for r in null)  # weights 1..4 over 100 elements


def test_unzoom_restores_a_centre_crop_and_masks_the_inside():
    from PIL import Image

    from trustgain.watermark.attacks import SUITE
    from trustgain.watermark.latent_invert import aligned_mask, unzoom

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    cropped = SUITE["crop_centre_50"](image, rng).resize((32, 32), Image.Resampling.BICUBIC)
    canvas, box = unzoom(cropped, np.sqrt(0.5), (32, 32))
    assert canvas.size == (32, 32) and box == (4, 4, 27, 27)
    inside = np.asarray(canvas, dtype=float)[8:24, 8:24]
    original = np.asarray(image, dtype=float)[8:24, 8:24]
    assert np.corrcoef(inside.ravel(), original.ravel())[0, 1] > 0.5
    mask = aligned_mask(box, 4, (4, 8, 8)).reshape(4, 8, 8)
    assert mask.sum() == 4 * 25 and mask[:, 1:6, 1:6].all()


def test_candidates_read_every_element_unless_masked(sd_pipe):
    from PIL import Image

    from trustgain.watermark.latent_invert import invert_candidates

    images = [Image.new("RGB", (32, 32), (120, 30, 200))]
    for masked in (False, True):
        cands = invert_candidates(sd_pipe, images, num_inference_steps=2, scales=(1.0, 0.7071),
                                  masked=masked)
        assert [c[0] for c in cands] == [1.0, 0.7071] and cands[0][2] is None
        assert (cands[1][2] is None) == (not masked)
        if masked:
            assert 0 < cands[1][2].sum() < cands[1][1][0].numel()


def test_guided_fixed_point_inversion_inverts_the_guided_sampler(sd_pipe, key):
    """With the generation prompt, guidance and refinements, inversion undoes the sampler
    better than plain empty-prompt inversion (what the --ideas bench measures at scale)."""
    z, _, _ = _marked(key, 2)
    prompts = ["a cat", "a dog"]
    out = sd_pipe(prompts, latents=z, num_inference_steps=4, height=16, width=16,
                  guidance_scale=4.0, output_type="latent").images
    exact = ddim_invert(sd_pipe, out, num_inference_steps=4, prompt=prompts,
                        guidance_scale=4.0, refine=3)
    plain = ddim_invert(sd_pipe, out, num_inference_steps=4)
    err_exact, err_plain = (float((x - z).norm() / z.norm()) for x in (exact, plain))
    assert err_exact < 0.5 * err_plain, (err_exact, err_plain)
    assert torch.equal(ddim_invert(sd_pipe, out, num_inference_steps=2, prompt=["", ""]),
                       ddim_invert(sd_pipe, out, num_inference_steps=2))


def test_exact_tpr_uses_the_exact_null():
    from trustgain.bench.watermark_latent import exact_tpr

    n = 256
    perfect = np.ones((3, n), dtype=bool)
    chance = np.zeros((3, n), dtype=bool)
    chance[:, : n // 2] = True
    ones = np.ones((3, n), dtype=np.int64)
    assert exact_tpr(perfect, ones) == (1.0, pytest.approx(np.sqrt(n)))
    tpr, z = exact_tpr(chance, ones)
    assert tpr == 0.0 and z == pytest.approx(0.0)
    # 159 of 256 matches: binom.sf(158, 256, 0.5) is about 5e-5, above 1e-6
    near = np.zeros((1, n), dtype=bool)
    near[0, :159] = True
    assert exact_tpr(near, ones[:1])[0] == 0.0
    assert exact_tpr(near, ones[:1], fpr=1e-4)[0] == 1.0


def test_detect_with_record_inverts_under_the_prompt_at_the_records_guidance(sd_pipe,
                                                                            monkeypatch):
    from trustgain.watermark import latent_invert

    ring = _ring(7)
    art = wrap(sd_pipe, [LatentMark()], keyring=ring)(
        "a cat", seed=2, num_inference_steps=3, height=16, width=16, guidance_scale=3.0)
    record = art.record.record
    assert record["stages"][0]["params"]["guidance_scale"] == 3.0
    used, inverted, invert = [], [], latent_invert.ddim_invert

    def spy(*args, **kwargs):
        used.append((kwargs["prompt"], kwargs["guidance_scale"]))
        inverted.append(invert(*args, **kwargs))
        return inverted[-1]

    monkeypatch.setattr(latent_invert, "ddim_invert", spy)
    key = latent_key(ring)
    latent_invert.detect_with_record(art.images, sd_pipe, key, record, prompt="a cat")
    latent_invert.detect_with_record(art.images, sd_pipe, key, record, prompt="a cat",
                                     guidance_scale=1.0)
    latent_invert.detect_with_record(art.images, sd_pipe, key, record)
    assert used == [("a cat", 3.0), ("a cat", 1.0), ("", 1.0)]
    # the guidance changes the inversion (the p-values may tie: the statistic is discrete)
    assert not torch.allclose(inverted[0], inverted[1])
    old = json.loads(json.dumps(record))  # a record from before guidance was kept
    del old["stages"][0]["params"]["guidance_scale"]
    latent_invert.detect_with_record(art.images, sd_pipe, key, old, prompt="a cat")
    assert used[-1] == ("a cat", 1.0)


def test_detect_latent_encodes_with_the_given_encoder(sd_pipe):
    import copy

    from trustgain.watermark.latent_invert import encode

    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    other = copy.deepcopy(sd_pipe.vae)
    assert torch.equal(encode(sd_pipe, pixels), encode(sd_pipe, pixels, other))
    with torch.no_grad():
        for p in other.encoder.parameters():
            p.mul_(0.5)
    assert not torch.allclose(encode(sd_pipe, pixels), encode(sd_pipe, pixels, other))


def test_inversion_takes_the_generation_prompt(sd_pipe):
    from PIL import Image

    from trustgain.watermark.latent_invert import invert_images, model_size

    h, w = model_size(sd_pipe)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(2)]
    plain = invert_images(sd_pipe, images, num_inference_steps=3)
    same = invert_images(sd_pipe, images, num_inference_steps=3, prompt="")
    assert torch.equal(plain, same)
    prompted = invert_images(sd_pipe, images, num_inference_steps=3, prompt=["a cat", "a dog"])
    assert prompted.shape == plain.shape and not torch.allclose(plain, prompted)
    with pytest.raises(ValueError, match="1 prompts for 2 images"):
        invert_images(sd_pipe, images, num_inference_steps=3, prompt=["a cat"])


def test_detect_latent_inverts_under_a_guessed_prompt(sd_pipe, monkeypatch):
    from PIL import Image

    from trustgain.watermark import latent_invert

    ring = _ring(8)
    art = wrap(sd_pipe, [LatentMark()], keyring=ring)(
        "", seed=2, num_inference_steps=3, height=16, width=16, num_images_per_prompt=2)
    used, invert = [], latent_invert.ddim_invert

    def spy(*args, **kwargs):
        used.append(kwargs["prompt"])
        return invert(*args, **kwargs)

    def guess(images):
        assert all(isinstance(im, Image.Image) for im in images)  # the images as given
        return [f"guess {i}" for i in range(len(images))]

    monkeypatch.setattr(latent_invert, "ddim_invert", spy)
    readings = latent_invert.detect_with_record(art.images, sd_pipe, latent_key(ring),
                                                art.record.record, prompt=guess)
    assert used == [["guess 0", "guess 1"]] and len(readings) == 2


def _guided_cats(sd_pipe, n: int):
    """``n`` marked outputs of "a cat" at guidance 3, their latent key and record."""
    ring = _ring(9)
    art = wrap(sd_pipe, [LatentMark()], keyring=ring)(
        "a cat", seed=4, num_inference_steps=3, height=16, width=16, num_images_per_prompt=n,
        guidance_scale=3.0)
    return art, latent_key(ring), art.record.record


def test_also_unprompted_reads_both_ways_and_keeps_the_better_at_twice_p(sd_pipe,
                                                                         monkeypatch):
    from trustgain.watermark import latent_invert

    art, key, record = _guided_cats(sd_pipe, 3)
    weights_used, read = [], latent_invert.read_candidates

    def spy(*args, **kwargs):
        weights_used.append(kwargs["reliability"])
        return read(*args, **kwargs)

    monkeypatch.setattr(latent_invert, "read_candidates", spy)
    plain, prompted = object(), object()  # stand-ins: only passed through to the spy...
    monkeypatch.setattr(latent_invert, "read_latent_mark",  # ...and read with ranks
                        _rank_reader(latent_invert.read_latent_mark))
    empty = latent_invert.detect_with_record(art.images, sd_pipe, key, record)
    under = latent_invert.detect_with_record(art.images, sd_pipe, key, record, prompt="a cat")
    both = latent_invert.detect_with_record(
        art.images, sd_pipe, key, record, prompt="a cat", also_unprompted=True,
        reliability=plain, prompted_reliability=prompted)
    assert weights_used == [None, None, plain, prompted]
    assert len({r.p_value for r in [*empty, *under]}) > 3  # the reads differ
    for e, u, b in zip(empty, under, both, strict=True):
        assert b.p_value == min(1.0, 2 * min(e.p_value, u.p_value))
        assert b.prompted == (u.p_value < e.p_value) and not e.prompted and u.prompted
        assert b.detected == (b.p_value <= 1e-6)
    # without a prompt there is one way to read, and nothing is doubled
    alone = latent_invert.detect_with_record(art.images, sd_pipe, key, record,
                                             also_unprompted=True)
    assert [r.p_value for r in alone] == [r.p_value for r in empty]


def test_averaged_both_ways_reads_the_mean_inversion_once(sd_pipe, monkeypatch):
    from trustgain.watermark import latent_invert

    art, key, record = _guided_cats(sd_pipe, 2)
    inverted, invert = [], latent_invert.invert_candidates

    def spy(*args, **kwargs):
        inverted.append(invert(*args, **kwargs))
        return inverted[-1]

    monkeypatch.setattr(latent_invert, "invert_candidates", spy)
    plain = object()
    monkeypatch.setattr(latent_invert, "read_latent_mark",
                        _rank_reader(latent_invert.read_latent_mark))
    mean = latent_invert.detect_with_record(
        art.images, sd_pipe, key, record, prompt="a cat", also_unprompted=True,
        combine="average", reliability=plain)
    assert len(inverted) == 2  # the same two inversions as the best-of read, one read
    (_, empty, _), (_, under, _) = inverted[0][0], inverted[1][0]
    assert not torch.equal(empty, under)
    direct = latent_invert.read_candidates(
        latent_invert.average_candidates(inverted[0], inverted[1]), key,
        nonces=[bytes.fromhex(n) for n in record["stages"][0]["params"]["nonces"]],
        expected_payloads=[record["stages"][0]["params"]["payload"]] * 2)
    assert [r.p_value for r in mean] == [r.p_value for r in direct]  # no correction
    assert all(r.prompted for r in mean)
    with pytest.raises(ValueError, match="combine must be 'best' or 'average'"):
        latent_invert.detect_with_record(art.images, sd_pipe, key, record, combine="mean")
    with pytest.raises(ValueError, match="same images"):
        latent_invert.average_candidates(inverted[0], [(0.5, empty, None)])


def _rank_reader(read):
    """``read_latent_mark`` with |z|-rank weights whatever reliability it is given."""

    def reader(*args, **kwargs):
        return read(*args, **{**kwargs, "reliability": None})

    return reader


def test_best_of_multiplies_by_the_number_of_reads():
    from trustgain.watermark.latent_invert import best_of

    def reading(p):
        return LatentReading(detected=p <= 1e-6, p_value=p, payload="", matches=0, n=1,
                             statistic="matches", nonce_index=0, tries=1)

    out = best_of([[reading(4e-7), reading(0.9)], [reading(3e-7), reading(0.6)],
                   [reading(1e-3), reading(0.5)]], 1e-6)
    assert [r.p_value for r in out] == [pytest.approx(9e-7), 1.0]
    assert [r.detected for r in out] == [True, False]
    with pytest.raises(ValueError, match="no candidates"):
        best_of([], 1e-6)


def test_digit_prompts_are_guessed_by_the_judge():
    from trustgain.models import guess_digit_prompts, load_mini_sd

    pipe = load_mini_sd()
    images = pipe(["a handwritten three", "a handwritten eight"], num_inference_steps=25,
                  guidance_scale=4.0, generator=torch.Generator().manual_seed(0)).images
    assert guess_digit_prompts(images) == ["a handwritten three", "a handwritten eight"]
