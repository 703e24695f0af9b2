"""The coefficient table: rows, overrides, validation, the generated Markdown."""
import dataclasses

import pytest

from lightrl.algos import ALGOS, CHOICES, AlgoRow, algos_markdown, get_algo

ROWS = ["raft", "raft++", "reinforce", "reinforce-rej", "reinforce-remove-all-wrong",
        "reinforce-remove-all-correct", "grpo-mean-only", "grpo", "dr-grpo", "dapo", "gspo", "gfpo", "rloo", "cispo",
        "reinforce++", "reinforce++-baseline", "ppo", "online-dpo", "iterative-dpo", "grpo-tis"]


def test_every_row_present_and_distinct():
    assert sorted(ALGOS) == sorted(ROWS)
    # Rows differ by fields only (source is a citation); no two rows may be the same algorithm.
    bodies = [dataclasses.replace(row, source="") for row in ALGOS.values()]
    assert len(set(bodies)) == len(bodies)


def test_defining_fields():
    assert ALGOS["raft"].keep == "positives" and ALGOS["raft"].ratio == "none"
    assert not ALGOS["raft"].needs_old_logp and ALGOS["raft++"].needs_old_logp
    assert ALGOS["reinforce"].reward_map == "pm1" and ALGOS["reinforce"].baseline == "none"
    assert ALGOS["reinforce-rej"].keep == "mixed"
    assert ALGOS["grpo"].scale == "group_std" and ALGOS["grpo"].kl_estimator == "k3"
    assert ALGOS["grpo"].needs_ref and ALGOS["grpo"].kl_in_loss and not ALGOS["dapo"].needs_ref
    assert ALGOS["grpo"].aggregate == "seq_mean_token_mean"
    assert ALGOS["dr-grpo"].scale == "none" and ALGOS["dr-grpo"].aggregate == "token_sum_norm"
    assert (ALGOS["dapo"].eps_low, ALGOS["dapo"].eps_high) == (0.2, 0.28) and ALGOS["dapo"].refill
    assert ALGOS["dapo"].overlong_buffer_tokens(20480) == 4096
    assert (ALGOS["gspo"].ratio, ALGOS["gspo"].eps_low, ALGOS["gspo"].eps_high) == ("sequence", 3e-4, 4e-4)
    assert ALGOS["gfpo"].keep == "top_k" and ALGOS["gfpo"].sample_factor == 2
    assert ALGOS["rloo"].baseline == "leave_one_out"
    assert ALGOS["cispo"].clip_mode == "cispo"
    assert ALGOS["reinforce++"].kl_per_token and ALGOS["reinforce++"].kl_estimator == "k1"
    assert ALGOS["reinforce++"].whiten and ALGOS["reinforce++"].baseline == "none"
    assert ALGOS["reinforce++-baseline"].whiten and ALGOS["reinforce++-baseline"].baseline == "group_mean"
    assert not ALGOS["grpo"].token_advantages and ALGOS["reinforce++"].token_advantages
    ppo = ALGOS["ppo"]
    assert ppo.critic and (ppo.gae_gamma, ppo.gae_lambda, ppo.vf_clip) == (1.0, 1.0, 0.5) and ppo.whiten
    assert ppo.kl_in_reward and ppo.kl_per_token and ppo.kl_estimator == "k1" and ppo.kl_coef == 0.001
    with pytest.raises(ValueError, match=r"vf_clip=0.5 must be None without a critic"):
        get_algo("grpo", vf_clip=0.5)
    with pytest.raises(ValueError, match=r"gae_lambda=1.5 must be in \[0, 1\]"):
        get_algo("ppo", gae_lambda=1.5)
    assert get_algo("ppo", vf_clip="none").vf_clip is None
    tis = ALGOS["grpo-tis"]
    assert (tis.rollout_is, tis.rollout_is_cap) == ("token_truncate", 2.0) and tis.needs_rollout_logp
    assert not any(ALGOS[n].needs_rollout_logp for n in ALGOS if n != "grpo-tis")
    with pytest.raises(ValueError, match=r"rollout_is_cap=0.5 must be >= 1"):
        get_algo("grpo-tis", rollout_is_cap=0.5)
    with pytest.raises(ValueError, match=r"rollout_is='token_mask' must be 'none' with pairs"):
        get_algo("online-dpo", rollout_is="token_mask").check_pairs()


def test_overrides_parse_strings_and_keep_other_fields():
    row = get_algo("grpo", eps_high="0.3", dual_clip="3", kl_coef=0, refill="true", top_k="4")
    assert (row.eps_high, row.dual_clip, row.kl_coef, row.refill, row.top_k) == (0.3, 3.0, 0.0, True, 4)
    assert isinstance(row.kl_coef, float) and not row.needs_ref
    assert row.scale == "group_std" and ALGOS["grpo"].eps_high == 0.2  # the table is untouched
    assert get_algo("grpo", dual_clip="none").dual_clip is None


@pytest.mark.parametrize("overrides, message", [
    (dict(eps_hi=0.3), "no field 'eps_hi'; valid fields: reward_map"),
    (dict(keep="best"), "AlgoRow.keep='best' is not one of"),
    (dict(aggregate="mean"), "AlgoRow.aggregate='mean' is not one of"),
    (dict(eps_low=1.5), "eps_low=1.5 must be in [0, 1]"),
    (dict(eps_high=-0.1), "eps_high=-0.1 must be >= 0"),
    (dict(dual_clip=0.5), "dual_clip=0.5 must be None or > 1"),
    (dict(std_eps=0), "std_eps=0.0 must be > 0"),
    (dict(kl_coef=-1), "kl_coef=-1.0 must be >= 0"),
    (dict(top_k=0), "top_k=0 must be an int >= 1"),
    (dict(top_k="x"), "top_k: cannot parse 'x'"),
    (dict(refill="maybe"), "refill: 'maybe' is not a bool"),
    (dict(overlong_buffer=4096), "overlong_buffer=4096.0 must be in [0, 1)"),
    (dict(kl_coef="nan"), "kl_coef=nan must be a real number"),
])
def test_validation_errors_name_field_and_allowed_values(overrides, message):
    with pytest.raises(ValueError) as err:
        get_algo("grpo", **overrides)
    assert message in str(err.value)


def test_cispo_rejects_dual_clip_and_unknown_algo():
    with pytest.raises(ValueError, match="dual_clip"):
        get_algo("cispo", dual_clip=3.0)
    with pytest.raises(ValueError, match="unknown algorithm 'trpo'; known: cispo, dapo"):
        get_algo("trpo")


def test_enum_choices_cover_the_row_fields():
    names = {f.name for f in dataclasses.fields(AlgoRow)}
    assert set(CHOICES) <= names
    for field, allowed in CHOICES.items():
        for value in allowed:
            if field == "dual_clip":
                continue
            kw = {field: value}
            if field == "clip_mode":
                kw["dual_clip"] = None
            assert getattr(AlgoRow(**kw), field) == value


def test_markdown_table_is_generated_from_rows():
    md = algos_markdown().splitlines()
    assert md[0].startswith("| algo |") and len(md) == 2 + len(ALGOS)
    for name, line in zip(ALGOS, md[2:]):
        assert line.startswith(f"| `{name}` |") and line.count("|") == md[0].count("|")
    assert "top 8 by length of 2x samples" in algos_markdown()
    assert "k3 x 0.04 in loss" in algos_markdown()
