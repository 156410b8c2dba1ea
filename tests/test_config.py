"""The config's checks: each section's own ranges, the retired keys of old run folders, and
``--set KEY=VALUE`` overrides, refused exactly like a YAML file's keys."""

import pytest
import yaml

import crabs.baselines
import crabs.loop
from crabs.baselines import BaselineConfig, load_baseline_config
from crabs.cli import main
from crabs.config import RETIRED, Config, drop_retired, load_config, parse_overrides

MALFORMED = "expected KEY=VALUE (dotted keys, e.g. sac.tau=0.01)"


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"config.sac: unknown key\(s\) \['lr_pi'\]"):
        Config.from_dict({"sac": {"lr_pi": 1}})
    with pytest.raises(ValueError, match="expected a finite number"):
        Config.from_dict({"sac": {"lr": float("nan")}})
    with pytest.raises(ValueError, match="must be >= 0"):
        Config.from_dict({"epochs": -1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("sac: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad, task="upright")
    other = tmp_path / "other.yaml"
    other.write_text("task: swing\n")
    with pytest.raises(ValueError, match="for task 'swing', not 'upright'"):
        load_config(other, task="upright")
    with pytest.raises(ValueError, match="unknown task"):
        load_config(task="pole")


def test_paper_values_are_available():
    from crabs.config import PAPER

    cfg = Config()
    assert cfg.dynamics.k == 5 and cfg.sac.gamma == 0.99 and cfg.explore.n == 100
    assert PAPER["barrier.reg_coef"] == 0.001 and cfg.mala.temperature == 0.03
    paper = Config().replace(dynamics={"hidden": list(PAPER["dynamics.hidden"])},
                             mala={"chains": PAPER["mala.chains"]})
    assert paper.dynamics.hidden == (400, 400, 400, 400) and paper.mala.chains == 10000
    # every listed departure is a real key whose default differs, and the paper's value is accepted
    nested: dict = {}
    for key, value in PAPER.items():
        *sections, name = key.split(".")
        node = cfg
        for sec in sections:
            node = getattr(node, sec)
        default = getattr(node, name)
        assert default != (tuple(value) if isinstance(value, (list, tuple)) else value), key
        d = nested
        for sec in sections:
            d = d.setdefault(sec, {})
        d[name] = list(value) if isinstance(value, tuple) else value
    assert Config.from_dict(nested).final_policy == "last"


@pytest.mark.parametrize("data,msg", [
    ({"epochs": -1}, "config.epochs: must be >= 0, got -1"),
    ({"sac": {"hidden": [64, 0]}}, "config.sac.hidden: layer sizes must be positive, got [64, 0]"),
    ({"dynamics": {"region_std": -1.0}}, "config.dynamics.region_std: must be >= 0, got -1.0"),
    ({"barrier": {"on_stuck": "retry"}},
     "config.barrier.on_stuck: must be 'rollback' or 'carry', got 'retry'"),
    ({"barrier": {"regrow_accept": "bigger"}},
     "config.barrier.regrow_accept: must be 'always' or 'if_larger', got 'bigger'"),
    ({"barrier": {"regrow_mode": "grow"}},
     "config.barrier.regrow_mode: must be 'rollouts' or 'dilate', got 'grow'"),
    ({"barrier": {"dilation": 1.0}}, "config.barrier.dilation: must be in (0, 1), got 1.0"),
    ({"barrier": {"reg_states": "everywhere"}},
     "config.barrier.reg_states: must be 'candidates', 'certified' or 'visited', got 'everywhere'"),
    ({"barrier": {"quiet_steps": 0}}, "config.barrier.quiet_steps: must be >= 1, got 0"),
    ({"barrier": {"eps": -0.001}}, "config.barrier.eps: must be >= 0, got -0.001"),
    ({"mala": {"refresh_frac": 1.5}}, "config.mala.refresh_frac: must be in [0, 1], got 1.5"),
    ({"sac": {"model_every": 0}}, "config.sac.model_every: must be >= 1, got 0"),
    ({"sac": {"adv_anchor": -1.0}}, "config.sac.adv_anchor: must be >= 0, got -1.0"),
    ({"explore": {"min_std_from_epoch": 0}}, "config.explore.min_std_from_epoch: must be >= 1, got 0"),
    ({"explore": {"region_std": -0.01}}, "config.explore.region_std: must be >= 0, got -0.01"),
    ({"explore": {"min_std": -0.01}}, "config.explore.min_std: must be >= 0, got -0.01"),
    ({"final_policy": "max"}, "config.final_policy: must be 'best' or 'last', got 'max'"),
])
def test_each_section_checks_its_own_fields(data, msg):
    with pytest.raises(ValueError) as e:
        Config.from_dict(data)
    assert str(e.value) == msg
    assert Config.from_dict({"seed": -1}).seed == -1  # the one integer that is not a count


@pytest.mark.parametrize("data,msg", [
    ({"algorithm": "ppo"}, "config.algorithm: must be one of sac, cpo, recovery_rl, sqrl, got 'ppo'"),
    ({"penalty": -1.0}, "config.penalty: must be >= 0, got -1.0"),
    ({"eval_every": 0}, "config.eval_every: must be >= 1, got 0"),
    ({"updates_per_step": 0}, "config.updates_per_step: must be >= 1, got 0"),
    ({"sac": {"model_horizon": 3}}, "config.sac.model_horizon: the baselines have no dynamics model (use 0)"),
    ({"sac": {"model_every": 0}}, "config.sac.model_every: must be >= 1, got 0"),
    ({"risk": {"gamma": 1.0}}, "config.risk.gamma and config.risk.eps must lie in (0, 1)"),
    ({"risk": {"eps": 0.0}}, "config.risk.gamma and config.risk.eps must lie in (0, 1)"),
    ({"risk": {"batch": 0}}, "config.risk.batch: must be >= 1, got 0"),
    ({"risk": {"samples": 0}}, "config.risk.samples: must be >= 1, got 0"),
    ({"cpo": {"backtrack_ratio": 1.0}},
     "config.cpo: step_size must be > 0, backtrack_ratio in (0, 1), cost_limit >= 0"),
])
def test_each_baseline_section_checks_its_own_fields(data, msg):
    with pytest.raises(ValueError) as e:
        BaselineConfig.from_dict(data)
    assert str(e.value) == msg


def test_retired_keys_are_dropped_from_old_runs_only(tmp_path):
    assert "dynamics.holdout" in RETIRED
    old = Config().to_dict()
    old["dynamics"]["holdout"] = 0.1  # a run folder written before the key was retired
    with pytest.raises(ValueError, match=r"config.dynamics: unknown key\(s\) \['holdout'\]"):
        Config.from_dict(old)
    assert Config.from_dict(drop_retired(old)) == Config()
    assert old["dynamics"]["holdout"] == 0.1  # a copy: the caller's dict is untouched
    assert drop_retired({"task": "tilt", "dynamics": 3}) == {"task": "tilt", "dynamics": 3}
    # a user's own file (or --set) naming a retired key is refused like any unknown key
    mine = tmp_path / "mine.yaml"
    mine.write_text("dynamics:\n  holdout: 0.1\n")
    with pytest.raises(ValueError, match=r"config.dynamics: unknown key\(s\) \['holdout'\]"):
        load_config(mine, task="upright")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['holdout'\]"):
        load_config(task="upright", overrides=parse_overrides(["dynamics.holdout=0.1"]))


def test_parse_overrides_nests_dotted_keys_and_parses_yaml():
    assert parse_overrides(["sac.tau=0.01", "epochs=12", "barrier.hidden=[32, 32]"]) == {
        "sac": {"tau": 0.01}, "epochs": 12, "barrier": {"hidden": [32, 32]}}
    got = parse_overrides(["sac.learn_alpha=false", "final_policy=last", "sac.target_entropy=null",
                           "sac={lr: 0.001, tau: 0.1}", "sac.tau=0.02", "epochs=3", "epochs=4"])
    assert got == {"sac": {"learn_alpha": False, "target_entropy": None, "lr": 0.001, "tau": 0.02},
                   "final_policy": "last", "epochs": 4}  # in order: later items win
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["sactau", "=1", "sac..tau=1", ".tau=1", "sac.=1"])
def test_parse_overrides_refuses_malformed_items(item):
    with pytest.raises(ValueError) as e:
        parse_overrides([item])
    assert str(e.value) == f"--set {item!r}: {MALFORMED}"
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_overrides(["sac.hidden=[1, 2"])


def test_overrides_apply_after_the_file_and_keep_the_rest(tmp_path):
    ov = parse_overrides(["sac.tau=0.01", "epochs=12", "barrier.hidden=[32, 32]"])
    cfg = load_config(task="upright", overrides=ov)
    assert (cfg.sac.tau, cfg.epochs, cfg.barrier.hidden) == (0.01, 12, (32, 32))
    default = load_config(task="upright")
    assert cfg == default.replace(sac={"tau": 0.01}, epochs=12, barrier={"hidden": [32, 32]})
    assert default.epochs == 16 and default.sac.steps_per_epoch == 2000  # upright.yaml's, kept
    mine = tmp_path / "mine.yaml"
    mine.write_text("epochs: 5\nsac:\n  tau: 0.2\n  lr: 0.001\n")
    cfg = load_config(mine, task="upright", overrides=ov)
    assert (cfg.epochs, cfg.sac.tau, cfg.sac.lr, cfg.sac.steps_per_epoch) == (12, 0.01, 0.001, 2000)
    with pytest.raises(ValueError, match="--set task: the task is 'upright', given by --task"):
        load_config(task="upright", overrides={"task": "tilt"})
    b = load_baseline_config("sac", None, "tilt", parse_overrides(["risk.nu=3", "seed=1"]), seed=2)
    assert (b.risk.nu, b.seed, b.task, b.algorithm) == (3.0, 2, "tilt", "sac")  # --seed after --set
    for key in ("task", "algorithm"):
        with pytest.raises(ValueError, match=f"--set {key}: the {key} is"):
            load_baseline_config("sac", None, "tilt", {key: "cpo"})


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["baseline", "sac"]])
def test_cli_set_errors_are_the_yaml_files(command, tmp_path, capsys):
    run = ["--task", "upright", "--out", str(tmp_path / "run")]
    mine = tmp_path / "mine.yaml"
    mine.write_text("sac:\n  taux: 1\n")
    from_file = _error(capsys, [*command, *run, "--config", str(mine)])
    assert from_file.startswith("crabs: error: config.sac: unknown key(s) ['taux']; valid keys: [")
    assert _error(capsys, [*command, *run, "--set", "sac.taux=1"]) == from_file
    malformed = _error(capsys, [*command, *run, "--set", "sactau"])
    assert malformed == f"crabs: error: --set 'sactau': {MALFORMED}\n"
    assert _error(capsys, [*command, *run, "--set", "task=tilt"]).startswith("crabs: error: --set task: ")
    assert _error(capsys, [*command, "--resume", str(tmp_path / "run"), "--set", "seed=1"]) == (
        "crabs: error: --set cannot be used with --resume: the run continues with its own config.yaml\n")
    assert not (tmp_path / "run").exists()


def test_cli_set_wrong_type(tmp_path, capsys):
    err = _error(capsys, ["train", "--task", "upright", "--out", str(tmp_path / "run"),
                          "--set", "epochs=abc"])
    assert err == "crabs: error: config.epochs: expected an integer, got 'abc'\n"


def test_cli_set_reaches_train(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_train(system, cfg, out, **kw):
        seen.append(cfg)
        return {"violations": 0}

    monkeypatch.setattr(crabs.loop, "train", fake_train)
    assert main(["train", "--task", "upright", "--out", str(tmp_path / "a"), "--quiet", "--seed", "3",
                 "--set", "sac.tau=0.01", "--set", "epochs=12", "--set", "seed=9"]) == 0
    assert seen[-1] == load_config(task="upright").replace(sac={"tau": 0.01}, epochs=12, seed=3)
    assert main(["train", "--task", "upright", "--out", str(tmp_path / "b"), "--quiet",
                 "--set", "epochs=12", "--epochs", "3"]) == 0
    assert seen[-1].epochs == 3  # --epochs, like --seed, applies after --set
    monkeypatch.setitem(crabs.baselines.BASELINES, "cpo", fake_train)
    assert main(["baseline", "cpo", "--task", "tilt", "--out", str(tmp_path / "c"), "--quiet",
                 "--set", "cpo.step_size=0.02", "--set", "total_steps=500", "--steps", "700"]) == 0
    assert seen[-1] == load_baseline_config("cpo", None, "tilt").replace(cpo={"step_size": 0.02},
                                                                          total_steps=700)
    capsys.readouterr()


def test_yaml_module_parses_overrides_like_a_file():
    """The values are YAML scalars, as in a config file: a bare 1e-2 is a string in YAML 1.1."""
    assert parse_overrides(["sac.lr=1e-2", "sac.tau=1.0e-2"]) == {"sac": {"lr": yaml.safe_load("1e-2"),
                                                                         "tau": 0.01}}
