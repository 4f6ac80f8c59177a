"""The run summary table: reference row from step 0, mean ± std of final metrics per loss."""

from __future__ import annotations

import json

from creditrl.preference.report import summarize


def _run(path, loss, final):
    path.mkdir()
    (path / "config.yaml").write_text(f"preference:\n  loss: {loss}\n")
    ref = {"step": 0, "eval/pref_acc": 0.1, "eval/pref_reward_acc": 0.0, "eval/greedy_acc": 0.5,
           "eval/kl_per_token_chosen": 0.0, "eval/kl_per_token_rejected": 0.0}
    fin = {"step": 5, **{f"final/{k.split('/')[1]}": v for k, v in ref.items() if k != "step"}, "final/pref_acc": final}
    (path / "metrics.jsonl").write_text(json.dumps(ref) + "\n" + json.dumps({"step": 1, "train/loss": 0.6}) + "\n"
                                        + json.dumps(fin) + "\n")
    return path


def test_summarize(tmp_path):
    runs = [_run(tmp_path / "a", "dpo", 0.6), _run(tmp_path / "b", "dpo", 0.8), _run(tmp_path / "c", "tdpo2", 0.7)]
    table = summarize(runs).splitlines()
    assert table[2].startswith("| reference (SFT) | - | 10.0 | 0.0 | 50.0 |")
    assert table[3].startswith("| dpo | 2 | 70.0 ± 14.1 |")  # sample std of 60, 80
    assert table[4].startswith("| tdpo2 | 1 | 70.0 |")
