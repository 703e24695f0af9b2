"""The embedded default: a tiny causal LM, a character tokenizer and an arithmetic task.

Everything here is built locally with random weights, so `python -m lightrl.run`
works on a CPU with nothing downloaded. The task is small integer arithmetic whose
answers the math verifier checks, written as `\\boxed{N}`.
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


def warm_start(model, tokenizer, rows: list[dict], *, steps: int, lr: float, seed: int, batch_size: int = 64,
               correct_frac: float = 0.2, progress: bool = True) -> None:
    """Supervised steps on imperfect demonstrations: -mean log-prob of completion tokens.

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
                 tokenizer(imperfect_demonstration(r, rng, correct_frac))["input_ids"] + [tokenizer.eos_token_id])
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
