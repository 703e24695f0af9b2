"""The embedded default: a tiny causal LM, a character tokenizer and an arithmetic task.

Everything here is built locally with random weights, so `python -m lightrl.run`
works on a CPU with nothing downloaded. The task is small integer arithmetic whose
answers the math verifier checks, written as `\\boxed{N}`: 'arithmetic' (one-digit sums, a
formatting lesson for RL) or 'arithmetic-hard' (two-digit sums taught by a teacher who forgets
carries, a lesson in arithmetic that separates the RL algorithms).
"""
import random

# torch, tokenizers and transformers are imported in the functions that use them: the preflight
# checks read CHARS (unknown_chars) before anything heavy is imported.

BOXED = "\\boxed{"
# "\boxed{" is one token so a completion is just a few tokens: \boxed{ 1 7 } <eos>.
CHARS = list("0123456789+-*=?() }")
SPECIALS = ["<pad>", "<eos>", "<unk>"]


def unknown_chars(text: str) -> set[str]:
    """Characters of `text` the tiny tokenizer does not know (it would read each as <unk>)."""
    return set(text.replace(BOXED, "")) - set(CHARS)


def build_tokenizer():
    """Character-level tokenizer (a PreTrainedTokenizerFast) over digits, operators and the `\\boxed{` marker."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [BOXED] + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_tokens([BOXED])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
        padding_side="left",
    )
    return fast


def build_model(tokenizer, seed: int = 0, hidden: int = 96, layers: int = 2):
    """A randomly initialised LlamaForCausalLM with tied embeddings, a few hundred thousand parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def arithmetic_problems(n: int, seed: int, max_operand: int = 10) -> list[dict]:
    """`n` problems `a+b=` with 0 <= a, b < max_operand and their answers, as data rows."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(max_operand), rng.randrange(max_operand)
        rows.append({"question": f"{a}+{b}=", "answer": str(a + b)})
    return rows


# The arithmetic-hard teacher drops each carry with this probability. Calibrated (README, "The harder
# task") for a warm start of 2000 steps at lr 2e-3: greedy held-out accuracy 0.25-0.33 over seeds 0-2,
# most of it on the 30% of sums without a carry; 0.6 gave 0.39.
CARRY_SLIP = 0.7


def hard_arithmetic_problems(n: int, seed: int) -> list[dict]:
    """`n` problems `a+b=` with 0 <= a, b < 100 and their answers, as data rows; "carry_slip" tells the
    warm start to imitate the carry-forgetting teacher (carry_slip_demonstration) on them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        rows.append({"question": f"{a}+{b}=", "answer": str(a + b), "carry_slip": CARRY_SLIP})
    return rows


def carries(a: int, b: int) -> int:
    """How many carries the written sum a + b needs (0, 1 or 2 for two-digit a, b)."""
    count, carry = 0, 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        count += carry
        a, b = a // 10, b // 10
    return count


def carry_slip_demonstration(row: dict, rng: random.Random) -> str:
    """A teacher who adds column by column and forgets each carry with probability row["carry_slip"].

    A sum with k carries comes out right with probability (1 - slip)^k: 1, 0.3 and 0.09 for two-digit
    sums at slip 0.7. Imitation learns the slips; RL has to learn when to carry.
    """
    terms = [int(x) for x in row["question"].rstrip("=").split("+")]
    total, place, carry = 0, 1, 0
    while any(terms) or carry:
        column = sum(t % 10 for t in terms) + carry
        total += (column % 10 if any(terms) else column) * place
        carry = column // 10 if rng.random() >= row["carry_slip"] else 0
        terms, place = [t // 10 for t in terms], place * 10
    return f"{BOXED}{total}}}"


def demonstration(row: dict) -> str:
    """The completion the warm start imitates."""
    return f"{BOXED}{row['answer']}}}"


def imperfect_demonstration(row: dict, rng: random.Random, correct_frac: float) -> str:
    """A sloppy teacher: right answer, but `1 - correct_frac` of the time it forgets to close the box.

    "\\boxed{7" is not an answer the verifier accepts. Imitation copies the sloppiness
    (a low starting reward); RL with the verifier removes it and sharpens the sums.
    """
    text = demonstration(row)
    return text if rng.random() < correct_frac else text[:-1]


def teacher(row: dict, rng: random.Random, correct_frac: float) -> str:
    """The warm start's demonstration of a row: the carry-forgetting teacher for arithmetic-hard rows,
    else the box-forgetting one."""
    if "carry_slip" in row:
        return carry_slip_demonstration(row, rng)
    return imperfect_demonstration(row, rng, correct_frac)


def warm_start(model, tokenizer, rows: list[dict], *, steps: int, lr: float, seed: int, batch_size: int = 64,
               correct_frac: float = 0.2, progress: bool = True) -> None:
    """Supervised steps on imperfect demonstrations (teacher): -mean log-prob of completion tokens.

    Log-probs come from lightrl.kernels.linear_logprobs on the completion positions' hidden
    states, like the RL loss, so no logits tensor is built here either.
    """
    import torch
    from tqdm.auto import tqdm

    from lightrl.kernels import linear_logprobs
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    # Linear decay to 10%: the last steps settle the sums instead of bouncing around them.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * s / max(steps, 1))
    weight = model.get_output_embeddings().weight
    model.train()
    for _ in tqdm(range(steps), desc="warm start", leave=False, disable=not progress):
        batch = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        seqs = [(tokenizer(r["question"])["input_ids"],
                 tokenizer(teacher(r, rng, correct_frac))["input_ids"] + [tokenizer.eos_token_id])
                for r in batch]
        width = max(len(p) + len(c) for p, c in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        rows_i, cols, targets = [], [], []
        for b, (p, c) in enumerate(seqs):
            ids[b, :len(p) + len(c)] = torch.tensor(p + c)
            attn[b, :len(p) + len(c)] = 1
            rows_i += [b] * len(c)
            cols += range(len(p) - 1, len(p) + len(c) - 1)
            targets += c
        device = weight.device
        hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=attn.to(device),
                                     use_cache=False).last_hidden_state
        logp = linear_logprobs(hidden[torch.tensor(rows_i), torch.tensor(cols)], weight,
                               torch.tensor(targets, device=device))
        loss = -logp.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
