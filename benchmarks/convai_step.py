"""Throughput of one retraining step of the language experiment at RoBERTa-base size, so a user can
plan a run: random weights from ``RobertaConfig()`` (12 layers, width 768; no download), 2 labels,
a batch of 8 contexts x 20 candidates = 160 (context, candidate) pairs of 128 tokens.

Run:  .venv/bin/python benchmarks/convai_step.py [--method LoRA-ML] [--rank 8] [--steps 2] [--threads 2]
                                                 [--device cpu]

One step is what LoRA-ML retraining does per task batch: the task's LoRA adapter (rank r, alpha 16,
dropout 0.1, every encoder Linear; 10 adapters attached, as for T = 10) and the base both train,
forward and backward over the 160 pairs with the per-pair binary cross-entropy of the 2 class
logits, then one AdamW step over the base and the adapters. ``--method SR`` times the same step
without adapters. One untimed step warms up (allocations, thread pools), then ``--steps`` steps
are timed; the result is seconds per step and pairs per second.

Memory: in float32 the activations of the 160 pairs take about 24 GB on the CPU (measured: a
whole-batch LoRA-ML step was killed for memory on a 23 GB machine), so the step accumulates the
gradient over micro-batches of ``--micro`` pairs (default 20, one context): the same gradient up to
rounding (each micro-batch's mean loss weighted by its share of the pairs), about 1/8 of the
memory. ``--micro 160`` times the whole batch at once (a GPU with enough memory).
"""

from __future__ import annotations

import argparse
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("LoRA-ML", "SR"), default="LoRA-ML", help="step to time (default LoRA-ML)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2)")
    p.add_argument("--batch", type=int, default=8, help="contexts per batch (default 8)")
    p.add_argument("--candidates", type=int, default=20, help="candidates per context (default 20)")
    p.add_argument("--length", type=int, default=128, help="tokens per pair (default 128)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--micro", type=int, default=20, help="pairs per micro-batch (default 20)")
    args = p.parse_args(argv)

    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    import sims

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = RobertaConfig(num_labels=2)
    model = RobertaForSequenceClassification(cfg).to(args.device)
    params = list(model.parameters())
    if args.method == "LoRA-ML":
        targets = tuple(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder." in n)
        net, params = sims.attach_lora(model, sims.LoraSpec(r=args.rank, lora_alpha=16.0, lora_dropout=0.1,
                                                            target_modules=targets), 10)
        net.set_adapter("task0")
        model = net.get_base_model()
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
    B, C, L = args.batch, args.candidates, args.length
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (B * C, L), generator=g).to(args.device)
    ids[:, 0], ids[:, -1] = cfg.bos_token_id, cfg.eos_token_id
    mask = torch.ones_like(ids)
    target = torch.nn.functional.one_hot(torch.randint(0, C, (B,), generator=g), C).reshape(-1).to(args.device)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        for i in range(0, B * C, args.micro):
            sl = slice(i, i + args.micro)
            logits = model(input_ids=ids[sl], attention_mask=mask[sl]).logits          # (micro, 2)
            loss = torch.nn.functional.cross_entropy(logits.float(), target[sl])
            (loss * (len(target[sl]) / (B * C))).backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per = sum(times) / len(times)
    trainable = sum(p.numel() for p in params)
    print(f"{args.method} step, RoBERTa-base (random weights), {B} x {C} pairs of {L} tokens (micro-batches of "
          f"{args.micro}), device {args.device}, {args.threads} torch thread(s), {trainable / 1e6:.1f} M trainable "
          f"parameters")
    print(f"steps: {', '.join(f'{t:.2f}' for t in times)} s; mean {per:.2f} s/step, {B * C / per:.1f} pairs/s")
    return per


if __name__ == "__main__":
    main()
