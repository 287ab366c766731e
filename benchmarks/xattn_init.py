"""Do a fresh D1 model's cross-attention blocks carry the speech? Transcript loss with the gates forced open.

    python benchmarks/xattn_init.py [--init random|lm] [--alignment none|monotonic] [--head NAME]
        [--utterances 24] [--gates 0.1,0.3,0.6]

Builds `recipes/speechllm_xattn_tiny.yaml`'s model untrained (its token CTC head or `--head`,
smollm2-135m, blocks initialised as `--init` says, ordered as `--alignment` says), sets every attention
gate to tanh(g) = each of `--gates`, and prints the mean next-token loss (nats per transcript token) on
the first cached synth_dev utterances with their own speech and with another utterance's (the batch's
speech rotated by one). A block that reads the speech gives a lower loss with the right speech; one
that does not changes both alike or nothing.
Reads only the recipe's cached dev states (`data.dev_states`; `llmasr data states`, docs/deep.md).
"""

from __future__ import annotations

import argparse
import math

import torch

from llmasr.components.speech.speechllm import build_speechllm
from llmasr.components.speech.xattn import XATTN_ALIGNMENTS, XATTN_INITS
from llmasr.train.config import load_recipe
from llmasr.train.speechllm import load_state_items, states_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="recipes/speechllm_xattn_tiny.yaml")
    ap.add_argument("--init", default="lm", choices=XATTN_INITS)
    ap.add_argument("--alignment", default="none", choices=XATTN_ALIGNMENTS)
    ap.add_argument("--head", default=None, help="the token CTC head (default: the recipe's)")
    ap.add_argument("--utterances", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gates", default="0.1,0.3,0.6", help="tanh of the gates, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    gates = [float(x) for x in a.gates.split(",")]
    if not all(0.0 <= g < 1.0 for g in gates):
        ap.error(f"--gates {a.gates}: each is tanh of a gate, from 0 up to (not including) 1")
    torch.set_num_threads(a.threads)
    overrides = [f"model.xattn_init={a.init}", f"model.xattn_alignment={a.alignment}"]
    recipe = load_recipe(a.recipe, overrides + ([f"model.head={a.head}"] if a.head else []))
    items = load_state_items(recipe.data.dev_states, recipe.model, recipe.data.max_duration)[: a.utterances]
    if not items:
        ap.error(f"{recipe.data.dev_states}: no cached dev utterance")
    model = build_speechllm(recipe.model, with_encoder=False, states_dim=int(items[0].states.shape[1])).eval()
    if model.xattn is None:
        ap.error(f"{a.recipe}: the model has no cross-attention blocks (model.fusion: xattn)")

    def loss(gate: float, rotate: bool = False) -> float:
        for block in model.xattn.blocks:
            block.attn_gate.data.fill_(math.atanh(gate))
        total, batches = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(items), a.batch):
                part = items[i : i + a.batch]
                batch = states_batch(part)
                if rotate and len(part) > 1:
                    other = states_batch(part[1:] + part[:1])
                    batch.features, batch.feature_lengths = other.features, other.feature_lengths
                total += float(model.compute_losses(batch).lm_loss)
                batches += 1
        return total / max(1, batches)

    label = f"init {a.init}, alignment {a.alignment}"
    print(f"{label}: gates 0: {loss(0.0):.3f} nats/token ({len(items)} utterances)")
    for g in gates:
        own, other = loss(g), loss(g, True)
        print(f"{label}: gates tanh {g}: own speech {own:.3f}, another utterance's {other:.3f}")


if __name__ == "__main__":
    main()
