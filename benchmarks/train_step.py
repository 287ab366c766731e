"""Seconds per speech-LLM update on this machine: what each lever of CPU training buys, side by side.

    python benchmarks/train_step.py [--utterances 8] [--steps 4] [--threads 2]

One model (whisper-tiny.en -> stack 4 -> smollm2-135m-instruct with LoRA r8, the speechllm_stack_tiny
shape without a head) takes full updates (forward, backward, AdamW step) on the same 8 synthetic dev
utterances (~30 s of audio) in each setting:

  audio, 30 s window     the encoder runs on every batch over Whisper's padded 30 s window
  audio, trimmed window  the encoder runs on the audio plus 1 s of silence (trim_tail 1.0)
  cached states          trimmed states read from `llmasr data states` (no encoder in the step)
  cached, bf16 LM        the same with the LLM held in bfloat16 under autocast

and, apart, the LLM output layer over every position vs only at transcript positions (what
`SpeechLLM.compute_losses` does). Settings take turns step by step, so drift in machine load hits all
alike; the median of `--steps` timed updates after one warm-up. bf16 is only fast on CPUs with native
bf16 matmul (AMX, AVX512-BF16): by default it is timed only there (`--bf16 on` forces it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from llmasr.components.lm.lora import LoraSettings
from llmasr.components.speech.speechllm import SpeechLlmConfig, build_speechllm, set_trainable
from llmasr.data.manifest import read_manifest
from llmasr.train.speechllm import audio_batch, load_state_items, states_batch


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=Path("work-data/synth_dev.jsonl"))
    ap.add_argument("--states", type=Path, default=Path("work-data/states/synth_dev"))
    ap.add_argument("--utterances", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--bf16", choices=["auto", "on", "off"], default="auto",
        help="time the bf16 setting: auto = only where the CPU has native bf16 matmul",
    )  # fmt: skip
    args = ap.parse_args()
    with_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def config(**kw: object) -> SpeechLlmConfig:
        base = {"encoder": "whisper-tiny.en", "lm": "smollm2-135m-instruct", "adapter": "stack",
                "adapter_kw": {"stack": 4}, "lora": LoraSettings(r=8, alpha=16)}  # fmt: skip
        return SpeechLlmConfig(**{**base, **kw})  # type: ignore[arg-type]

    utts = list(read_manifest(args.manifest))[: args.utterances]
    ids = {u.id for u in utts}
    items = [x for x in load_state_items([str(args.states)], config(trim_tail=1.0), 30.0) if x.id in ids]
    seconds = sum(u.duration or 0.0 for u in utts)
    settings = {
        "audio, 30 s window": (config(trim_tail=None), False, False),
        "audio, trimmed window": (config(trim_tail=1.0), False, False),
        "cached states": (config(trim_tail=1.0), True, False),
        "cached, bf16 LM": (config(trim_tail=1.0, lm_dtype="bfloat16"), True, True),
    }
    if not with_bf16:
        del settings["cached, bf16 LM"]
    runs = {}
    for name, (cfg, cached, bf16) in settings.items():
        dim = int(items[0].states.shape[1]) if cached else None
        model = build_speechllm(cfg, with_encoder=not cached, states_dim=dim)
        set_trainable(model, ["adapter", "lora"])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        batch = (
            states_batch(items) if cached else audio_batch(utts, model.encoder.features, use_prompts=False)
        )
        runs[name] = (model, opt, batch, bf16)

    def update(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: object, bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.compute_losses(batch).loss  # type: ignore[attr-defined]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(args.steps + 1):
        for name, (model, opt, batch, bf16) in runs.items():
            s = update(model, opt, batch, bf16)
            if step:  # the first is a warm-up
                times[name].append(s)
    note = "" if with_bf16 else " (bf16 not timed: --bf16 on)"
    print(f"{len(utts)} utterances, {seconds:.1f} s of audio per update; threads={args.threads}; "
          f"native bf16 matmul: {native_bf16()}{note}")  # fmt: skip
    base = statistics.median(times["audio, 30 s window"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:24s} {m:6.2f} s per update   x{m / base:4.2f} of the 30 s window")

    # the output layer: every position vs transcript positions only
    model, _, batch, _ = runs["cached states"]
    head = model.llm.get_output_embeddings()
    hidden_size = head.weight.shape[1]
    positions = 8 * 80  # ~prompt + audio embeddings + transcript per utterance, 8 utterances
    transcript = sum(len(t.split()) * 2 for t in batch.texts)  # ~2 LLM tokens per word
    x_all = torch.randn(positions, hidden_size)
    x_tr = x_all[:transcript]
    for label, x in (("output layer, every position", x_all), ("output layer, transcript only", x_tr)):
        ts = []
        for _ in range(args.steps + 1):
            t = time.perf_counter()
            with torch.no_grad():
                torch.log_softmax(head(x).float(), dim=-1)
            ts.append(time.perf_counter() - t)
        print(f"{label:31s} {statistics.median(ts[1:]) * 1000:7.1f} ms ({x.shape[0]} positions, forward)")


if __name__ == "__main__":
    main()
