"""Config builders shared by the training tests."""
from lightrl.config import Config


def small_config(tmp_path, name, **kw) -> Config:
    """A two-step run of the tiny model on the arithmetic task, no warm start, no eval, no checkpoints
    (each keyword overrides one field); the run directory is tmp_path/name."""
    base = dict(data="arithmetic", eval_data="", instruction="", steps=2, prompts_per_step=4, group_size=4,
                max_new_tokens=6, warm_start_steps=0, out_dir=str(tmp_path), run_name=name, progress=False,
                save_every=0, threads=1, micro_batch=8)
    base.update(kw)
    return Config(**base)
