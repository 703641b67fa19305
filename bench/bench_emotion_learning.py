"""Does an emotion architecture learn from scratch? Held-out-identity accuracy of a short run on synthetic faces.

    python -m bench.bench_emotion_learning [--arch dan --size 64 --epochs 7 --batch 16 --lr 1e-3]

Trains through the real path (EmotionDataModule's synthetic split, EmotionModule.compute_loss, Lightning) on
`--train-ids` identities and prints, after every epoch, the accuracy on `--val-ids` identities it never saw
(chance: 1/7). DAN from random initialisation is slow to start: its heads are summed after a log-softmax
across heads, whose gradient vanishes while the heads are alike, so the published recipes start from an
MS-Celeb ResNet-18. The test suite therefore starts DAN from a trunk trained on the synthetic faces
(tests/test_learning.py); this script shows the from-scratch behaviour.
"""
from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from emotion.data import EmotionDataModule
from emotion.module import EmotionModule


class HeldOutAccuracy(L.Callback):
    def __init__(self):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        # the epoch's validation has run by now; the module logs val/acc only after callbacks' validation hooks
        acc = float(trainer.callback_metrics["val/acc"])
        print(f"epoch {trainer.current_epoch + 1:>2}  step {trainer.global_step:>4}  held-out acc {acc:.3f}  "
              f"({time.perf_counter() - self.start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="dan")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-ids", type=int, default=12)
    parser.add_argument("--val-ids", type=int, default=6)
    parser.add_argument("--per-subject", type=int, default=56)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, verbose=False)
    data = EmotionDataModule("synthetic", num_classes=7, image_size=args.size,
                             subjects=(args.train_ids, args.val_ids, 1), per_subject=args.per_subject,
                             batch_size=args.batch, num_workers=0, seed=args.seed)
    module = EmotionModule(data.class_names, image_size=args.size, arch=args.arch, augment={"hflip": {}},
                           optimizer="adamw", lr=args.lr, weight_decay=0.05, scheduler="cosine")
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=args.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[HeldOutAccuracy()])
    print(f"{args.arch} from scratch, {args.size}px, {args.train_ids} training / {args.val_ids} held-out identities, "
          f"{args.per_subject} faces each, batch {args.batch}, AdamW lr {args.lr} cosine, "
          f"{args.threads} thread(s); chance 0.143")
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main()
