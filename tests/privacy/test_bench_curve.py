"""The utility bench's settings: table epsilons, the curve's epsilons and noise multipliers."""

from __future__ import annotations

from trustgain.bench import privacy_finetune as pf


def test_curve_settings_map_to_finetune_arguments():
    table, curve = pf.settings(False), pf.settings(False, curve=True)
    assert list(table) == ["nodp", "eps1", "eps4", "eps10"]
    assert set(table) < set(curve) and "sigma0.005" in curve and "eps100" in curve
    assert pf._dp_args("nodp", curve["nodp"]) == {"dp": False}
    assert pf._dp_args("eps10", curve["eps10"]) == {"dp": True, "target_epsilon": 10.0,
                                                    "accountant": "prv"}
    # past epsilon 100 PRV cannot size the noise: the tail is set by sigma, RDP reports epsilon
    assert pf._dp_args("sigma0.02", curve["sigma0.02"]) == {"dp": True, "noise_multiplier": 0.02,
                                                            "accountant": "rdp"}
    assert list(pf.settings(True)) == ["nodp", "eps10"]


def test_bench_entry_point_names_the_area_module_for_its_own_flags(capsys):
    import pytest

    from trustgain.bench.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["privacy-finetune", "--only", "curve"])
    assert exc.value.code == 2
    assert "python -m trustgain.bench.privacy_finetune --help" in capsys.readouterr().err
