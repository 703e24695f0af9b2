"""The coefficient table: every RLVR algorithm lightrl knows is one frozen row.

All of them follow grad = E[GC(q, o, t) * grad log pi(o_t | q, o_<t)] (DeepSeekMath's
unified paradigm); a row says how GC is built: which samples are kept, the
baseline and scale of the advantage, the ratio and its clip, KL, entropy and how
token terms are summed. Code branches on these fields, never on a row's name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Allowed values of the enumerated fields (validated in AlgoRow.__post_init__).
CHOICES = {
    "reward_map": ("identity", "pm1"),
    "keep": ("all", "positives", "mixed", "drop_all_wrong", "drop_all_correct", "top_k"),
    "top_k_by": ("length", "reward_per_token"),
    "baseline": ("none", "group_mean", "leave_one_out"),
    "scale": ("none", "group_std", "batch_std"),
    "ratio": ("none", "token", "sequence"),
    "clip_mode": ("ppo", "cispo"),
    "kl_estimator": ("k1", "k2", "k3", "k1+", "k2+", "k3+"),
    "aggregate": ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "token_sum_norm"),
    "pairs": ("none", "first", "shortest"),
    "rollout_is": ("none", "token_truncate", "sequence_truncate", "token_mask", "sequence_mask"),
}


@dataclass(frozen=True)
class AlgoRow:
    """One algorithm = one row of gradient-coefficient choices.

    Rewards and filtering (used by ``group_advantages`` and the training loop):
      reward_map      "identity" | "pm1": pm1 maps a {0,1} reward r to 2r-1 (the Reinforce rows).
      keep            which samples get a nonzero advantage, decided on the mapped verifier scores alone
                      (shaping terms - format, overlong penalty, KL in reward - never decide it;
                      "correct" = mapped score > 0):
                        "all";
                        "positives": reward equal to its group's max and > 0 (RAFT);
                        "mixed": groups whose rewards are not all equal (Reinforce-Rej, DAPO);
                        "drop_all_wrong": drop groups whose rewards are all <= 0;
                        "drop_all_correct": drop groups whose rewards are all > 0;
                        "top_k": the ``top_k`` best of each group by ``top_k_by`` (GFPO).
      top_k_by        "length" (shortest first) | "reward_per_token" (highest reward / length first).
                      Ties go to the earlier sample. Only read when keep == "top_k".
      top_k           int >= 1, samples kept per group when keep == "top_k"; must be <= the sampled
                      group size (group_size * sample_factor), which the loop checks.
      sample_factor   int >= 1: the loop samples group_size * sample_factor completions per prompt.
      refill          bool: dynamic sampling (DAPO): the loop keeps sampling prompts until the batch
                      holds enough groups with at least one kept sample.
      overlong_buffer float in [0, 1): DAPO's soft overlong zone as a FRACTION of the max completion
                      length (DAPO: 4096 of 20480 = 0.2); ``overlong_buffer_tokens(max_length)`` turns
                      it into tokens for ``lightrl.rewards.rules.overlong_penalty``. 0 = off.
      overlong_penalty float >= 0, the penalty at (and beyond) the max length. 0 = off. Like every
                      shaping term it is added after reward_map and does not decide ``keep``.

    Advantage (per group; "group" = the completions of one prompt):
      baseline        "none" | "group_mean" | "leave_one_out" (mean of the other samples of the group,
                      RLOO). A learned value baseline is the critic (below).
      scale           "none" | "group_std" | "batch_std" (unbiased std over the kept samples of the group
                      / of the whole batch, taken after the baseline is subtracted for batch_std).
      std_eps         float > 0 added to the std before dividing.
      Advantages are computed over the kept samples only and are 0 elsewhere.

    Ratio and clip (used by ``policy_loss``):
      ratio           "none": on-policy, ratio = exp(logp - sg(logp)) = 1 with gradient (no old log-probs);
                      "token": exp(logp - old_logp) per token;
                      "sequence": exp(mean over the sequence's tokens of (logp - old_logp)) (GSPO).
      eps_low, eps_high  floats: ratio clipped to [1 - eps_low, 1 + eps_high]; 0 <= eps_low <= 1,
                      eps_high >= 0.
      dual_clip       None or float > 1: for negative advantages the objective is bounded below by
                      dual_clip * A (dual-clip PPO). Only with clip_mode "ppo".
      clip_mode       "ppo": min(r A, clip(r) A); "cispo": sg(clip(r)) * A * logp (CISPO, MiniMax-M1).

    Regularizers:
      kl_coef         float >= 0; 0 = no KL (and no reference model).
      kl_estimator    "k1" | "k2" | "k3" (Schulman's estimators of KL(pi || ref)), or "k1+" | "k2+" | "k3+":
                      the estimator's value with k2's gradient (straight-through).
      kl_in_reward    bool: subtract kl_coef * (sequence sum of the estimator) from the reward, after
                      reward_map and before the baseline (the loop passes it to group_advantages as
                      shaping), instead of adding kl_coef * KL to the loss.
      kl_per_token    bool, with kl_in_reward: the estimator is a per-token reward instead, so token t's
                      advantage is the sequence's minus kl_coef * (sum of k_i over its tokens i >= t), the
                      return-to-go with gamma 1 (REINFORCE++); added after the advantage step.
      whiten          bool: per-token advantages whitened over the batch's mask tokens (of the kept
                      sequences), (A - mean) / (unbiased std + std_eps): REINFORCE++'s global normalization.

    Per-token advantages (lightrl.kernels.token_advantages: rows with kl_per_token, whiten or a critic):
      the sequence's advantage is the reward of its last token (plus the per-token KL rewards), and
      GAE turns these rewards into per-token advantages and value targets.
      critic          bool: a learned value model (lightrl.critic) gives the values of GAE and is
                      trained on its returns; False: values 0.
      gae_gamma, gae_lambda  floats in [0, 1]: GAE's discount and trace decay.
      vf_clip         None or float > 0: the critic's new values are clipped to old value +- vf_clip
                      in its loss (PPO's value clipping).
      entropy_coef    float: the loss gets - entropy_coef * entropy (a bonus when > 0).
      entropy_top_frac float in (0, 1]: the policy-gradient term counts only on the batch's top fraction
                      of mask tokens by the policy's entropy (Wang et al. 2025, "80/20": 0.2); KL and
                      entropy terms still count everywhere. 1 = every token (off).

    Preference pairs (DPO; lightrl.kernels.pair_coefficients):
      pairs           "none" | "first" | "shortest": each group gives one pair, a correct (chosen) and an
                      incorrect (rejected) sample ("correct" = mapped score > 0, as for keep): the first
                      of each kind, or the shortest of each kind (ties: the earlier). Groups without both
                      give none; only paired samples are kept. The loss is DPO's,
                      -log sigmoid(dpo_beta * (D_chosen - D_rejected)), D = sum over the completion's
                      mask tokens of logp - ref_logp, as sequence-level coefficients on the per-token
                      log-probs (needs ratio "none", aggregate "seq_mean_token_sum", kl_coef 0 and no
                      rollout correction: check_pairs, which config validation runs).
      dpo_beta        float > 0, DPO's beta.
      ref_refresh     int >= 0: every ref_refresh steps the reference becomes a copy of the current
                      policy (iterative DPO); 0 = never.

    Rollout correction (the sampler's log-probs pi_rollout, from the engine, vs the trainer's pi_old of the
    same weights; lightrl.kernels.rollout_weights):
      rollout_is      "none" | "token_truncate": advantages times min(pi_old / pi_rollout, cap) per token
                      (TIS) | "sequence_truncate": times min(prod over the sequence's tokens, cap) |
                      "token_mask": tokens whose ratio is outside [low, cap] leave the loss |
                      "sequence_mask": sequences whose product ratio is outside [low, cap] leave it.
      rollout_is_cap  float >= 1 (C, or C_high for masks); rollout_is_low float in [0, 1] (C_low).
                      With identical log-probs every ratio is 1 and the correction changes nothing.
      old_logp_from_engine  bool: the ratio's old log-probs are the engine's sampling log-probs, not a
                      no-grad pass of the trainer (saves that pass; the ratio then also carries the
                      sampler / trainer mismatch, even with one update per batch). Needs a ratio and
                      rollout_is "none" (the correction compares the two).

    Aggregation of token terms into the scalar loss (tokens = the mask-true tokens):
      aggregate       "token_mean": mean over all tokens of the batch;
                      "seq_mean_token_mean": mean over non-empty sequences of each one's token mean;
                      "seq_mean_token_sum": mean over non-empty sequences of each one's token sum;
                      "token_sum_norm": token sum / (non-empty sequences * loss_constant) (Dr.GRPO; the
                      loop passes loss_constant = the max completion length).

    source            citation, for the table only.
    """

    reward_map: str = "identity"
    keep: str = "all"
    top_k_by: str = "length"
    top_k: int = 1
    sample_factor: int = 1
    refill: bool = False
    overlong_buffer: float = 0.0
    overlong_penalty: float = 0.0
    baseline: str = "none"
    scale: str = "none"
    std_eps: float = 1e-4
    ratio: str = "token"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    clip_mode: str = "ppo"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in_reward: bool = False
    kl_per_token: bool = False
    whiten: bool = False
    critic: bool = False
    gae_gamma: float = 1.0
    gae_lambda: float = 1.0
    vf_clip: float | None = None
    entropy_coef: float = 0.0
    entropy_top_frac: float = 1.0
    aggregate: str = "token_mean"
    pairs: str = "none"
    dpo_beta: float = 0.1
    ref_refresh: int = 0
    rollout_is: str = "none"
    rollout_is_cap: float = 2.0
    rollout_is_low: float = 0.5
    old_logp_from_engine: bool = False
    source: str = ""

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"AlgoRow.{name}={value!r} is not one of {allowed}")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AlgoRow.{name}={value!r} must be an int >= 1")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"AlgoRow.{name}={getattr(self, name)!r} must be True or False")
        for name in _FLOAT_FIELDS + _OPTIONAL_FLOATS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_FLOATS:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"AlgoRow.{name}={value!r} must be a real number")
        _check(self.std_eps > 0, "std_eps", self.std_eps, "> 0 (it keeps std 0 from dividing by zero)")
        _check(0 <= self.eps_low <= 1, "eps_low", self.eps_low, "in [0, 1] (the lower clip is 1 - eps_low)")
        _check(self.eps_high >= 0, "eps_high", self.eps_high, ">= 0")
        _check(self.kl_coef >= 0, "kl_coef", self.kl_coef, ">= 0")
        _check(0 < self.entropy_top_frac <= 1, "entropy_top_frac", self.entropy_top_frac,
               "in (0, 1]: the fraction of tokens, by entropy, the policy gradient acts on (1 = all)")
        _check(0 <= self.overlong_buffer < 1, "overlong_buffer", self.overlong_buffer,
               "in [0, 1): a fraction of the max completion length")
        _check(self.overlong_penalty >= 0, "overlong_penalty", self.overlong_penalty, ">= 0")
        if isinstance(self.ref_refresh, bool) or not isinstance(self.ref_refresh, int) or self.ref_refresh < 0:
            raise ValueError(f"AlgoRow.ref_refresh={self.ref_refresh!r} must be an int >= 0 (0 = never)")
        _check(self.dpo_beta > 0, "dpo_beta", self.dpo_beta, "> 0")
        _check(self.ref_refresh == 0 or self.needs_ref, "ref_refresh", self.ref_refresh,
               "0 without a reference model (kl_coef 0 and pairs 'none')")
        _check(self.rollout_is_cap >= 1, "rollout_is_cap", self.rollout_is_cap,
               ">= 1 (a ratio of 1, identical sampler and trainer, must pass unchanged)")
        _check(0 <= self.rollout_is_low <= 1, "rollout_is_low", self.rollout_is_low, "in [0, 1]")
        if self.old_logp_from_engine:
            _check(self.ratio != "none" and self.rollout_is == "none", "old_logp_from_engine", True,
                   "False unless the row has a ratio and rollout_is 'none'")
        for name in ("gae_gamma", "gae_lambda"):
            _check(0 <= getattr(self, name) <= 1, name, getattr(self, name), "in [0, 1]")
        if self.vf_clip is not None:
            _check(self.vf_clip > 0, "vf_clip", self.vf_clip, "None or > 0")
            _check(self.critic, "vf_clip", self.vf_clip, "None without a critic (critic=False)")
        if self.kl_per_token:
            _check(self.kl_in_reward, "kl_per_token", self.kl_per_token, "False unless kl_in_reward is True")
        if self.dual_clip is not None:
            _check(self.dual_clip > 1, "dual_clip", self.dual_clip, "None or > 1")
            _check(self.clip_mode == "ppo", "dual_clip", self.dual_clip, "None when clip_mode='cispo'")

    @property
    def needs_old_logp(self) -> bool:
        """Whether the loss needs log-probs of the sampling policy (any ratio)."""
        return self.ratio != "none"

    @property
    def needs_ref(self) -> bool:
        """Whether a reference model's log-probs are needed (any KL, DPO)."""
        return self.kl_coef > 0 or self.pairwise

    @property
    def needs_rollout_logp(self) -> bool:
        """Whether the engine must return its sampling log-probs (rollout correction, or as old log-probs)."""
        return self.rollout_is != "none" or self.old_logp_from_engine

    @property
    def pairwise(self) -> bool:
        """Whether the row trains on preference pairs (DPO) instead of advantages."""
        return self.pairs != "none"

    @property
    def kl_in_loss(self) -> bool:
        """Whether policy_loss adds kl_coef * KL per token (else KL is off or in the reward)."""
        return self.kl_coef > 0 and not self.kl_in_reward

    @property
    def selects_by_entropy(self) -> bool:
        """Whether the policy-gradient term acts only on the high-entropy tokens (entropy_top_frac < 1)."""
        return self.entropy_top_frac < 1

    @property
    def token_advantages(self) -> bool:
        """Whether advantages differ between the tokens of a sequence (per-token KL reward, whitening)."""
        return (self.kl_per_token and self.kl_coef > 0) or self.whiten or self.critic

    def overlong_buffer_tokens(self, max_length: int) -> int:
        """The soft overlong zone in tokens for a given max completion length (0 = off)."""
        return int(round(self.overlong_buffer * max_length))

    def check_pairs(self) -> None:
        """Raise unless a pairs row (DPO) has the fields its coefficients assume (checked before a run)."""
        if not self.pairwise:
            return
        for name, want in (("ratio", "none"), ("aggregate", "seq_mean_token_sum"), ("kl_coef", 0.0),
                           ("rollout_is", "none")):
            _check(getattr(self, name) == want, name, getattr(self, name),
                   f"{want!r} with pairs={self.pairs!r} (DPO's coefficient is the whole gradient)")
        _check(not self.token_advantages, "pairs", self.pairs, "'none' with per-token advantages")

    def with_overrides(self, **overrides) -> "AlgoRow":
        """A copy with some fields replaced, validated.

        Values may be given as strings (from a command line): they are parsed to the
        field's type ("none" -> None for dual_clip and vf_clip; "true"/"false"/"1"/"0" for bools).
        """
        known = [f.name for f in dataclasses.fields(self)]
        parsed = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"AlgoRow has no field {name!r}; valid fields: {', '.join(known)}")
            parsed[name] = _parse(name, value)
        return dataclasses.replace(self, **parsed)


_INT_FIELDS = ("top_k", "sample_factor")  # >= 1; ref_refresh (>= 0) is parsed as an int too
_BOOL_FIELDS = ("refill", "kl_in_reward", "kl_per_token", "whiten", "critic", "old_logp_from_engine")
_FLOAT_FIELDS = ("overlong_buffer", "overlong_penalty", "std_eps", "eps_low", "eps_high",
                 "kl_coef", "entropy_coef", "entropy_top_frac", "gae_gamma", "gae_lambda", "dpo_beta",
                 "rollout_is_cap", "rollout_is_low")
_OPTIONAL_FLOATS = ("dual_clip", "vf_clip")  # None = off


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"AlgoRow.{name}={value!r} must be {expected}")


def _parse(name: str, value):
    if not isinstance(value, str):
        if name in _FLOAT_FIELDS + _OPTIONAL_FLOATS and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    try:
        if name in _INT_FIELDS + ("ref_refresh",):
            return int(text)
        if name in _FLOAT_FIELDS:
            return float(text)
        if name in _OPTIONAL_FLOATS:
            return None if text.lower() in ("none", "") else float(text)
    except ValueError:
        raise ValueError(f"AlgoRow.{name}: cannot parse {value!r} as a number") from None
    if name in _BOOL_FIELDS:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"AlgoRow.{name}: {value!r} is not a bool (true/false/1/0/yes/no)")
        return lowered in ("true", "1", "yes")
    return text


_MINIMALIST = "Xiong et al. 2025, A Minimalist Approach to LLM Reasoning (arXiv 2504.11343)"
_GRPO = "Shao et al. 2024, DeepSeekMath (arXiv 2402.03300)"
_REINFORCE_PP = "Hu et al. 2025, REINFORCE++ (arXiv 2501.03262)"

ALGOS: dict[str, AlgoRow] = {
    # RAFT (Dong et al. 2023, arXiv 2304.06767) as run in the Minimalist paper: SFT on the
    # best-of-group correct samples, no ratio.
    "raft": AlgoRow(keep="positives", ratio="none", aggregate="token_mean",
                    source="Dong et al. 2023, RAFT (arXiv 2304.06767); " + _MINIMALIST),
    # RAFT++: RAFT with importance sampling and PPO clipping (Minimalist paper, Sec. 3).
    "raft++": AlgoRow(keep="positives", ratio="token", eps_low=0.2, eps_high=0.2,
                      aggregate="token_mean", source=_MINIMALIST),
    # Reinforce with +-1 rewards, no baseline, clipped token ratio (Minimalist paper).
    "reinforce": AlgoRow(reward_map="pm1", ratio="token", aggregate="token_mean", source=_MINIMALIST),
    # Reinforce-Rej: drop prompts whose samples are all correct or all wrong (Minimalist paper).
    "reinforce-rej": AlgoRow(reward_map="pm1", keep="mixed", aggregate="token_mean", source=_MINIMALIST),
    # The Minimalist paper's ablations of what GRPO adds to Reinforce.
    "reinforce-remove-all-wrong": AlgoRow(reward_map="pm1", keep="drop_all_wrong",
                                          aggregate="token_mean", source=_MINIMALIST),
    "reinforce-remove-all-correct": AlgoRow(reward_map="pm1", keep="drop_all_correct",
                                            aggregate="token_mean", source=_MINIMALIST),
    "grpo-mean-only": AlgoRow(baseline="group_mean", aggregate="token_mean", source=_MINIMALIST),
    # GRPO as in DeepSeekMath: group-normalized advantage, k3 KL in the loss (beta 0.04),
    # per-sequence token mean.
    "grpo": AlgoRow(baseline="group_mean", scale="group_std", kl_coef=0.04, kl_estimator="k3",
                    aggregate="seq_mean_token_mean", source=_GRPO),
    # Dr.GRPO (Liu et al. 2025, arXiv 2503.20783): no std, no length normalization.
    "dr-grpo": AlgoRow(baseline="group_mean", aggregate="token_sum_norm",
                       source="Liu et al. 2025, Understanding R1-Zero-Like Training (arXiv 2503.20783)"),
    # DAPO (Yu et al. 2025, arXiv 2503.14476): clip-higher, dynamic sampling, token-level loss,
    # soft overlong punishment (L_cache 4096 of L_max 20480), no KL.
    "dapo": AlgoRow(baseline="group_mean", scale="group_std", keep="mixed", refill=True,
                    eps_low=0.2, eps_high=0.28, aggregate="token_mean",
                    overlong_buffer=0.2, overlong_penalty=1.0,
                    source="Yu et al. 2025, DAPO (arXiv 2503.14476)"),
    # GSPO (Zheng et al. 2025, arXiv 2507.18071): length-normalized sequence ratio, tiny clip range,
    # sequence-level mean.
    "gspo": AlgoRow(baseline="group_mean", scale="group_std", ratio="sequence",
                    eps_low=3e-4, eps_high=4e-4, aggregate="seq_mean_token_mean",
                    source="Zheng et al. 2025, GSPO (arXiv 2507.18071)"),
    # GFPO (Shrivastava et al. 2025, arXiv 2508.09726): sample 2x, keep the 8 shortest per group,
    # normalize over the kept ones.
    "gfpo": AlgoRow(baseline="group_mean", scale="group_std", keep="top_k", top_k_by="length",
                    top_k=8, sample_factor=2, aggregate="token_mean",
                    source="Shrivastava et al. 2025, GFPO (arXiv 2508.09726)"),
    # RLOO (Ahmadian et al. 2024, arXiv 2402.14740; Kool et al. 2019): leave-one-out baseline, the
    # whole completion is one action.
    "rloo": AlgoRow(baseline="leave_one_out", aggregate="seq_mean_token_sum",
                    source="Ahmadian et al. 2024, Back to Basics (arXiv 2402.14740)"),
    # CISPO (MiniMax-M1, arXiv 2506.13585): clipped IS weight as a stop-gradient coefficient on
    # log pi; no lower bound in practice (eps_low 1 puts it at 0).
    "cispo": AlgoRow(baseline="group_mean", scale="group_std", clip_mode="cispo",
                     eps_low=1.0, eps_high=0.28, aggregate="token_mean",
                     source="MiniMax 2025, MiniMax-M1 (arXiv 2506.13585)"),
    # REINFORCE++ (Hu et al. 2025): no critic, no group baseline; the outcome reward minus the
    # token-level k1 KL as a return-to-go, then advantages whitened over the whole batch's tokens.
    # PPO with a learned critic (Schulman et al. 2017) as the seed paper ran it in verl: verl's PPO
    # defaults, GAE gamma = lam = 1, value clip 0.5, k1 KL per token in the reward at 0.001 (fixed),
    # advantages whitened over the batch, token-mean loss.
    "ppo": AlgoRow(critic=True, gae_gamma=1.0, gae_lambda=1.0, vf_clip=0.5, ratio="token", eps_low=0.2,
                   eps_high=0.2, kl_coef=0.001, kl_estimator="k1", kl_in_reward=True, kl_per_token=True,
                   whiten=True, aggregate="token_mean",
                   source="Schulman et al. 2017, PPO (arXiv 1707.06347), with verl's PPO settings as in "
                          + _MINIMALIST),
    # GRPO with truncated importance sampling against the sampler's log-probs (Yao et al. 2025):
    # advantages times min(pi_old / pi_rollout, 2) per token.
    "grpo-tis": AlgoRow(baseline="group_mean", scale="group_std", kl_coef=0.04, kl_estimator="k3",
                        aggregate="seq_mean_token_mean", rollout_is="token_truncate", rollout_is_cap=2.0,
                        source=_GRPO + "; Yao et al. 2025, Your Efficient RL Framework Secretly Brings You "
                                       "Off-Policy RL Training (TIS)"),
    # Online DPO (Guo et al. 2024): DPO's loss on pairs sampled from the current policy each step,
    # labelled by the verifier; the reference stays the starting policy.
    "online-dpo": AlgoRow(pairs="shortest", dpo_beta=0.1, ratio="none", aggregate="seq_mean_token_sum",
                          source="Rafailov et al. 2023, DPO (arXiv 2305.18290); Guo et al. 2024, Online AI "
                                 "Feedback (arXiv 2402.04792)"),
    # Iterative DPO (Xiong et al. 2024): the same, with the reference moved to the current policy at the
    # start of each iteration (every 20 steps here).
    "iterative-dpo": AlgoRow(pairs="shortest", dpo_beta=0.1, ref_refresh=20, ratio="none",
                             aggregate="seq_mean_token_sum",
                             source="Xiong et al. 2024, Iterative Preference Learning (arXiv 2312.11456)"),
    "reinforce++": AlgoRow(ratio="token", eps_low=0.2, eps_high=0.2, kl_coef=0.01, kl_estimator="k1",
                           kl_in_reward=True, kl_per_token=True, whiten=True, aggregate="token_mean",
                           source=_REINFORCE_PP),
    # REINFORCE++-baseline (same paper, for groups of samples per prompt): group-mean baseline, then
    # the same global whitening; the KL moves to the loss as k2.
    "reinforce++-baseline": AlgoRow(baseline="group_mean", ratio="token", eps_low=0.2, eps_high=0.2,
                                    kl_coef=0.01, kl_estimator="k2", whiten=True, aggregate="token_mean",
                                    source=_REINFORCE_PP),
}


def get_algo(name: str, **overrides) -> AlgoRow:
    """The row called ``name`` with ``overrides`` applied (see AlgoRow.with_overrides)."""
    if name not in ALGOS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGOS))}")
    return ALGOS[name].with_overrides(**overrides)


def algos_markdown() -> str:
    """The table of ALGOS as Markdown, one line per row (for the README and --list-algos)."""
    cols = ["reward", "keep", "advantage", "ratio / clip", "KL", "aggregate", "source"]
    lines = ["| algo | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, row in ALGOS.items():
        lines.append("| " + " | ".join([f"`{name}`"] + _describe(row)) + " |")
    return "\n".join(lines)


def _describe(row: AlgoRow) -> list[str]:
    reward = "{0,1}->{-1,+1}" if row.reward_map == "pm1" else "r"
    if row.overlong_penalty > 0 and row.overlong_buffer > 0:
        reward += f" + overlong penalty {row.overlong_penalty:g} (last {row.overlong_buffer:.0%})"
    keep = row.keep if not row.pairwise else f"one pair per group ({row.pairs} correct vs {row.pairs} incorrect)"
    if row.keep == "top_k":
        keep = f"top {row.top_k} by {row.top_k_by} of {row.sample_factor}x samples"
    if row.refill:
        keep += ", refill batch"
    adv = {"none": "r", "group_mean": "r - mean", "leave_one_out": "r - mean of others"}[row.baseline]
    if row.scale != "none":
        adv = f"({adv}) / ({row.scale.replace('_', ' ')} + {row.std_eps:g})"
    if row.ratio == "none":
        ratio = "none (on-policy)"
    else:
        ratio = f"{row.ratio}, {row.clip_mode} [1-{row.eps_low:g}, 1+{row.eps_high:g}]"
        if row.old_logp_from_engine:
            ratio += ", old log-probs from the engine"
        if row.dual_clip is not None:
            ratio += f", dual-clip {row.dual_clip:g}"
    kl = "-" if row.kl_coef == 0 else (
        f"{row.kl_estimator} x {row.kl_coef:g} in {'reward' if row.kl_in_reward else 'loss'}")
    if row.kl_coef and row.kl_per_token:
        kl += " per token (return-to-go)"
    if row.rollout_is != "none":
        what = "x min(ratio, {c:g})" if row.rollout_is.endswith("truncate") else "mask outside [{lo:g}, {c:g}]"
        adv += f", rollout IS {row.rollout_is.split('_')[0]} " + what.format(c=row.rollout_is_cap,
                                                                           lo=row.rollout_is_low)
    if row.pairwise:
        adv = f"DPO, beta {row.dpo_beta:g}" + (f", reference refreshed every {row.ref_refresh} steps"
                                               if row.ref_refresh else "")
    if row.critic:
        adv = f"GAE(gamma {row.gae_gamma:g}, lambda {row.gae_lambda:g}) on a critic's values" + (
            f" (value clip {row.vf_clip:g})" if row.vf_clip is not None else "")
    if row.whiten:
        adv += ", whitened over the batch's tokens"
    agg = row.aggregate
    if row.entropy_coef:
        agg += f", entropy {row.entropy_coef:g}"
    if row.entropy_top_frac < 1:
        agg += f", policy gradient on the top {row.entropy_top_frac:.0%} of tokens by entropy"
    return [reward, keep, adv, ratio, kl, agg, row.source]
