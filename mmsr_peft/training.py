"""The training loop shared by pretraining and adaptation: Accelerate for devices, DDP, precision and state."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .arguments import TrainingArguments
from .data.collate import TrainCollator
from .data.processing import ItemInputs
from .encoders import EncoderOutput
from .errors import CheckpointError
from .evaluation import EvalSet, evaluate
from .train_state import COMPLETE_MARKER, TrainState, check_training_state, last_complete_state, saved_states

logger = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@10"


# Parameter groups with a learning rate of their own: (argument, name prefix of the model's parameters).
ENCODER_GROUPS = (("text_learning_rate", "item_tower.text."), ("vision_learning_rate", "item_tower.vision."))


def parameter_groups(named: dict[str, torch.nn.Parameter], args: TrainingArguments) -> list[dict]:
    """The optimizer's groups: each encoder whose learning rate is set (`--text_learning_rate`,
    `--vision_learning_rate`) gets a group of its own, everything else trains at `--learning_rate`. Names are
    matched wherever the prefix occurs, so peft's wrapped names (`base_model.model.item_tower.text...`) match."""
    groups, rest = [], dict(named)
    for argument, prefix in ENCODER_GROUPS:
        rate = getattr(args, argument)
        if rate is None:
            continue
        params = [rest.pop(name) for name in list(rest) if prefix in name]
        if params:
            groups.append({"params": params, "lr": rate})
    return [{"params": list(rest.values()), "lr": args.learning_rate}, *groups]


def make_optimizer(named: dict[str, torch.nn.Parameter], args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW over the `named` parameters (see `parameter_groups`): torch's, or bitsandbytes' AdamW8bit
    (`optim="adamw8bit"`), whose 8-bit moments take a quarter of the memory (tensors under 4096 values keep
    32-bit moments)."""
    groups = parameter_groups(named, args)
    if args.optim == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay)


def learning_rate_factor(kind: str, warmup: int, total: int, state: TrainState):
    """The multiplier of the peak learning rate at each scheduler step, for `torch.optim.lr_scheduler.LambdaLR`:
    a linear warm-up over `warmup` steps, then `kind` (`--lr_scheduler_type`) until step `total`. For
    `reduce_lr_on_plateau` the multiplier after the warm-up is `state.lr_scale`, which the trainer lowers at the
    end of an epoch (and which is saved and resumed with the rest of the training state)."""

    def factor(step: int) -> float:
        if step < warmup:  # a plateau during the warm-up lowers it too, from the next step on
            return step / warmup * (state.lr_scale if kind == "reduce_lr_on_plateau" else 1.0)
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if kind == "linear":
            return 1.0 - progress
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return state.lr_scale if kind == "reduce_lr_on_plateau" else 1.0

    return factor


def trackers(report_to: list[str]) -> list[str]:
    """The Accelerate trackers `--report_to` names: `auto` is TensorBoard when it is installed, else none; `none`
    is none; `all` is every tracker installed; a named tracker that is not installed is an error."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    names = [str(name).lower() for name in report_to]
    if names in (["none"], []):
        return []
    available = {str(getattr(name, "value", name)) for name in get_available_trackers()}
    if names == ["auto"]:
        return ["tensorboard"] if "tensorboard" in available else []
    if names == ["all"]:
        return sorted(available)
    known = set(LOGGER_TYPE_TO_CLASS) | {t.value for t in LoggerType if t.value != "all"}
    for name in names:
        if name not in known:
            raise ValueError(
                f"--report_to {name}: unknown tracker; one of auto, none, all, {', '.join(sorted(known))}"
            )
        if name not in available:
            extra = " (or: pip install 'mmsr-peft[tracking]')" if name == "tensorboard" else ""
            raise ImportError(f"--report_to {name}: the {name} package is not installed: pip install {name}{extra}")
    return names


def make_accelerator(args: TrainingArguments, item_tower: str, fusion: str):
    """An Accelerator that saves numbered training states under `output_dir/checkpoints` and logs to the
    `--report_to` trackers under `output_dir/logs`."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    from .fusion import TOKEN_FUSIONS

    project = ProjectConfiguration(
        args.output_dir,
        logging_dir=str(Path(args.output_dir, "logs")),
        automatic_checkpoint_naming=True,
        total_limit=args.save_total_limit,
    )
    # Token-level fusions leave the vision tower's pooled projection unused: DDP has to expect that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=item_tower == "multimodal" and fusion in TOKEN_FUSIONS)
    return Accelerator(
        mixed_precision=args.mixed_precision,
        project_config=project,
        kwargs_handlers=[ddp],
        log_with=trackers(args.report_to) or None,
    )


def check_compilable(model) -> None:
    """`--torch_compile` cannot trace peft's LoRA on `nn.MultiheadAttention` (open_clip ViTs, attention fusions,
    SASRec): it swaps the attention's weight parameters at every forward. Refused up front, naming the layers."""
    from peft.tuners.lora.layer import MultiheadAttention

    swapped = [name for name, module in model.named_modules() if isinstance(module, MultiheadAttention)]
    if swapped:
        raise ValueError(
            f"--torch_compile: LoRA on nn.MultiheadAttention cannot be compiled (peft swaps its weights at every "
            f"forward), here {len(swapped)} layers such as {swapped[0]!r}; leave those components out of LoRA "
            "(e.g. --components text fusion) or train without --torch_compile"
        )


def tracked_config(model, args: TrainingArguments) -> dict:
    """The run's settings as trackers take them (TensorBoard's hparams: flat, scalars or strings): the training
    arguments and the model's config, nested keys joined by `/`."""
    import dataclasses

    flat = {}

    def add(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{prefix}/{key}" if prefix else str(key), inner)
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[prefix] = "none" if value is None else value
        else:
            flat[prefix] = json.dumps(value, default=str)

    add("training", dataclasses.asdict(args))
    add("model", model.config.to_dict())
    return flat


ENCODER_INPUTS = {"text": ("input_ids", "attention_mask"), "image": ("pixel_values",)}  # what each reads of items
# Most memory the states entering an encoder's lowest trainable block may take for a catalog (`frozen_blocks`);
# above it (MiniLM's: 48 KiB an item, so about 170,000 items) the encoder runs whole at every step.
BLOCK_INPUTS_BUDGET = 8 * 2**30


def precompute_frozen_states(
    model,
    catalog_inputs: ItemInputs,
    batch_size: int = 256,
    cache_dir: str | None = None,
    accelerator=None,
    frozen_blocks: bool = True,
) -> ItemInputs:
    """Runs each encoder that has no trainable parameter over the catalog once (eval mode) and attaches its
    outputs, so training steps and evaluations gather them instead of running the encoder again. With
    `cache_dir`, the outputs are also kept on disk (see `mmsr_peft.cache`) and reused by later runs. With
    `accelerator`, its processes share the encoding (each its slice of the catalog, gathered on all) and its main
    process alone writes the cache.

    Only what the model reads is computed, kept and cached: a fusion that attends over tokens gets the token
    states, any other one the pooled vector alone (as a one-token output); the frozen encoder's own inputs (token
    ids, pixels) are dropped. Token states that nothing reads would cost more than the rest of a training step to
    gather (MiniLM's 32 x 384 per item, about 1,000 items a step on MovieLens-100k), and held for a catalog of a
    million items they take tens of GB. A model with side adapters also gets each frozen encoder's per-layer
    states, which they read.

    With `frozen_blocks`, an encoder whose lower blocks are frozen and whose top blocks train (top-k fine-tuning,
    LoRA in the top blocks) gets the states entering its lowest trainable block (`BlockInputs`, computed in eval
    mode, in memory for this run only: they depend on nothing that trains), and runs from that block on, unless
    they would take more than `BLOCK_INPUTS_BUDGET` bytes.
    """
    from .cache import FeatureCache, encode_catalog
    from .fusion import TOKEN_FUSIONS

    tower = model.item_tower
    reads_tokens = model.config.item_tower == "multimodal" and model.config.fusion.type in TOKEN_FUSIONS
    cache = FeatureCache(cache_dir) if cache_dir else None
    states, dropped = {}, {}
    for kind, encoder, run in (("text", tower.text, tower.encode_text), ("image", tower.vision, tower.encode_image)):
        if encoder is None:
            continue
        if any(p.requires_grad for p in encoder.parameters()):
            start = encoder.first_cached_block() if frozen_blocks and not len(tower.side_adapters) else 0
            if not start:
                continue
            encode = _block_inputs(encoder, kind, start)
            (probe,) = encode_catalog(encode, encoder, catalog_inputs.select(torch.arange(1)), 1, "measure")
            size = probe.states.nbytes * len(catalog_inputs)
            if size > BLOCK_INPUTS_BUDGET:
                logger.warning(
                    "the states entering block %d of the %s encoder would take %.1f GiB for %d items (more than "
                    "%.1f GiB): the encoder runs whole at every step",
                    start,
                    kind,
                    size / 2**30,
                    len(catalog_inputs),
                    BLOCK_INPUTS_BUDGET / 2**30,
                )
                continue
            logger.info(
                "the %s encoder runs from block %d on, the states entering it computed once (%.0f MiB)",
                kind,
                start,
                size / 2**20,
            )
            desc = f"encode {kind} up to block {start}"
            outputs = encode_catalog(encode, encoder, catalog_inputs, batch_size, desc, accelerator)
            states[f"{kind}_blocks"] = outputs[0]
            dropped.update(dict.fromkeys(ENCODER_INPUTS[kind]))
            continue
        kinds = (kind if reads_tokens else f"{kind}_pooled",)
        if len(tower.side_adapters):  # the side adapters read the per-layer states: from the same pass
            kinds += (f"{kind}_layers",)
        encode = _frozen_outputs(tower, kind, run, reads_tokens, layers=len(kinds) == 2)
        if cache is not None:
            outputs = cache.encode_together(kinds, encoder, encode, catalog_inputs, batch_size, accelerator)
        else:
            outputs = encode_catalog(encode, encoder, catalog_inputs, batch_size, f"encode {kind}", accelerator)
        states[f"{kind}_states"] = outputs[0]
        if len(outputs) == 2:
            states[f"{kind}_layers"] = outputs[1]
        dropped.update(dict.fromkeys(ENCODER_INPUTS[kind]))
    return replace(catalog_inputs, **dropped, **states) if states else catalog_inputs


def _block_inputs(encoder, kind: str, start: int):
    """The states entering block `start` of the `kind` encoder, as a forward on items giving a one-tuple."""

    def encode(items: ItemInputs) -> tuple:
        if kind == "text":
            return (encoder.block_inputs(items.input_ids, items.attention_mask, start),)
        return (encoder.block_inputs(items.pixel_values, start),)

    return encode


def _frozen_outputs(tower, kind: str, run, tokens: bool, layers: bool):
    """What `precompute_frozen_states` keeps of the `kind` encoder, as a forward on items giving a tuple: its output
    (with the token states if `tokens`, else the pooled vector alone), then, if `layers`, its per-layer states."""

    def encode(items: ItemInputs) -> tuple:
        if not layers:
            output = run(items)
            return (output if tokens else pooled_output(output),)
        output, states = tower.encode_layers(items, kind)
        return (output if tokens else pooled_output(output), states)

    return encode


def pooled_output(output: EncoderOutput) -> EncoderOutput:
    """An encoder's pooled vectors alone, as a one-token output `(N, 1, H)`."""
    pooled = output.pooled
    return EncoderOutput(pooled, pooled[:, None], torch.ones(len(pooled), 1, dtype=torch.bool, device=pooled.device))


def pooled_only(run):
    """`run` (an encoder's forward on items) keeping only the pooled vectors (`pooled_output`)."""

    def encode(items: ItemInputs) -> EncoderOutput:
        return pooled_output(run(items))

    return encode


def check_averaging(args: TrainingArguments, accelerator) -> None:
    """Refuses `--ema_decay` where each process holds a shard of the weights (FSDP, DeepSpeed over several
    processes): the average would be of each shard, and the training state keeps the main process's alone."""
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if args.ema_decay and sharded and accelerator.num_processes > 1:
        raise ValueError(
            f"--ema_decay is not supported with {accelerator.distributed_type.value} over "
            f"{accelerator.num_processes} processes (sharded weights); train without it, or with DDP"
        )


def train(*args, **kwargs) -> TrainState:
    """Trains a model as `Trainer(*args, **kwargs)` does (see it) and returns the final `TrainState`; the model ends
    with its best weights."""
    return Trainer(*args, **kwargs).train()


class Trainer:
    """The training loop shared by pretraining and adaptation.

    Evaluates on `eval_sets` after every epoch, keeps the weights with the best validation NDCG@10 (restored
    into `model` at the end), calls `on_best(model, metrics)` on the main process at each improvement, saves
    the full training state every `save_steps` steps and at each epoch end, resumes from the last complete one
    with `--resume`, and stops early after `patience` epochs without improvement. Pass `catalog_inputs` through
    `precompute_frozen_states` first (the caller also evaluates with them) so frozen encoders run once, not at
    every step. `candidates` (catalog indices) restricts the negatives to those items
    (`Corpus.negative_candidates`: everything but the cold-start items). `train_skip` (`Corpus.train_skip`): per
    training sequence, its first targets that are context only (overlapping windows, `--train_stride`). With
    `--ema_decay`, what is validated, selected and kept is the moving average of the trainable weights.
    """

    def __init__(
        self,
        model,
        train_sequences: list[np.ndarray],
        catalog_inputs: ItemInputs,
        eval_sets: list[EvalSet],
        args: TrainingArguments,
        accelerator,
        on_best=None,
        candidates=None,
        train_skip=None,
    ):
        from accelerate.utils import is_compiled_module

        if not train_sequences:
            raise ValueError(
                "no training sequences: every user has fewer than 3 interactions before the held-out two, or "
                "none is left once --train_user_fraction and --cold_start_fraction have taken their share"
            )
        check_averaging(args, accelerator)
        if args.torch_compile:
            check_compilable(model)
        self.model, self.catalog_inputs, self.eval_sets = model, catalog_inputs, eval_sets
        self.args, self.accelerator, self.on_best = args, accelerator, on_best
        counts = np.bincount(np.concatenate(train_sequences), minlength=len(catalog_inputs))
        self.generator = torch.Generator()
        self.collator = TrainCollator(
            catalog_inputs,
            model.config.loss,
            args.num_negatives,
            counts if args.logq else None,
            seed=args.seed + accelerator.process_index,
            candidates=candidates,
            negative_table=args.negative_table,
            pad_to_multiple_of=args.pad_items_to_multiple_of,
            sequence_length=model.config.sequence.max_len + 1,
        )
        samples = (
            train_sequences if train_skip is None else list(zip(train_sequences, train_skip.tolist(), strict=True))
        )
        loader = torch.utils.data.DataLoader(
            samples,
            batch_size=args.batch_size,
            shuffle=True,
            collate_fn=self.collator,
            generator=self.generator,
        )
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if args.feed_forward_checkpointing and not model.feed_forward_checkpointing_enable():
            logger.warning("--feed_forward_checkpointing: no encoder of this model has a feed-forward block it knows")
        if args.encoder_dropout is not None:
            model.set_encoder_dropout(args.encoder_dropout)
        self.trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        optimizer = make_optimizer(self.trainable, args)
        processes = accelerator.num_processes
        self.total_steps = args.num_epochs * math.ceil(len(train_sequences) / (args.batch_size * processes))
        if args.max_steps > 0:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.state = TrainState()
        # Accelerate steps a prepared scheduler once per process at every optimizer step: count in those units.
        warmup = int(args.warmup_ratio * self.total_steps) * processes
        factor = learning_rate_factor(args.lr_scheduler_type, warmup, self.total_steps * processes, self.state)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        # this run's settings per group, put back after a resumed state's (`_resume_or_start`)
        self.group_settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        self.ddp_model, self.optimizer, self.loader, self.scheduler = accelerator.prepare(
            model, optimizer, loader, scheduler
        )
        # what `prepare` left in the model: the same tensors under DDP, sharded ones under FSDP
        self.trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        # --ema_decay: the moving average of the trainable weights, from the starting ones (`_update_average`)
        self.average = {name: p.detach().clone() for name, p in self.trainable.items()} if args.ema_decay else None
        if args.torch_compile and not is_compiled_module(self.ddp_model):  # `--dynamo_backend` compiled it already
            self.ddp_model = torch.compile(
                self.ddp_model, backend=args.torch_compile_backend, mode=args.torch_compile_mode
            )

    def train(self) -> TrainState:
        """Runs the epochs (from the saved state with `--resume`) and leaves the best weights in the model."""
        args, accelerator, state = self.args, self.accelerator, self.state
        self._resume_or_start()
        if accelerator.log_with:
            accelerator.init_trackers("tensorboard", config=tracked_config(self.model, args))
        if args.evaluate_start and not state.history:  # epoch 0: the starting weights, a candidate like any epoch
            self._end_of_epoch()
        progress = tqdm(
            total=self.total_steps, initial=state.step, desc="train", disable=not accelerator.is_local_main_process
        )
        while state.epoch < args.num_epochs and state.stale < args.patience and state.step < self.total_steps:
            self._epoch(progress)
            self._end_of_epoch()
            self._save_state()
            accelerator.wait_for_everyone()
        progress.close()
        for tracker in accelerator.trackers:  # not `end_training`: it also ends the process group, which callers need
            tracker.finish()
        current = {**dict(self.model.named_buffers()), **self.trainable}  # buffers: BatchNorm statistics too
        with torch.no_grad():
            for name, value in state.best_weights.items():
                current[name].copy_(value)
        return state

    def _resume_or_start(self) -> None:
        """With `--resume`, the last complete training state under `output_dir/checkpoints` (checked first);
        either way, Accelerate numbers the states it saves after the ones on disk."""
        args, accelerator, state = self.args, self.accelerator, self.state
        saved = saved_states(args.output_dir)
        if args.resume:
            last = last_complete_state(args.output_dir)
            if last is None:
                raise FileNotFoundError(f"--resume: no complete training state under {args.output_dir}/checkpoints")
            check_training_state(last, accelerator.process_index)
            state.load(last)
            state.check_weights({**dict(self.model.named_buffers()), **self.trainable}, last)
            if state.processes not in (None, accelerator.num_processes):
                raise CheckpointError(
                    f"{last / TrainState.FILE}: saved by a run over {state.processes} processes, resumed over "
                    f"{accelerator.num_processes}: its step counts and data shards are per process; resume with "
                    f"{state.processes} processes, or start again without --resume"
                )
            changed = state.changed_args(args)
            if changed:
                logger.warning(
                    "%s was saved with other training arguments (%s): the run goes on with the new ones, so it will "
                    "not end as an uninterrupted run would with either",
                    last / TrainState.FILE,
                    "; ".join(changed),
                )
            self._resume_average(last)
            try:
                accelerator.load_state(str(last))
            except Exception as err:  # noqa: BLE001 (a damaged file of the state: a sentence, not a traceback)
                detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                cause = f"the arguments changed ({'; '.join(changed)}) or " if changed else ""
                raise CheckpointError(
                    f"{last}: the training state cannot be loaded ({detail[:300]}); {cause}a file of it is damaged: "
                    "delete this checkpoint folder to resume from the one before, or start again without --resume"
                ) from None
            self._apply_group_settings()
            # states after the last complete one were killed while being written: never resumed from, but
            # Accelerate's rotation counts them, and would delete the complete ones first
            for folder in saved[saved.index(last) + 1 :] if accelerator.is_main_process else []:
                shutil.rmtree(folder)
                logger.warning("%s: deleted, a training state killed while being written", folder)
            accelerator.wait_for_everyone()
            saved = saved_states(args.output_dir)
            accelerator.print(f"resumed at epoch {state.epoch}, step {state.step} from {last}")
        state.record_args(args)
        state.processes = accelerator.num_processes
        # Accelerate numbers states from 0 on every start: continue after the ones on disk instead of colliding.
        accelerator.project_configuration.iteration = int(saved[-1].name.split("_")[1]) + 1 if saved else 0

    def _apply_group_settings(self) -> None:
        """Accelerate's `load_state` brings back the saved optimizer's learning rates and weight decay: this run's
        arguments are put back (the moments and step counts stay the saved ones), and the current learning rate is
        recomputed from them at the resumed step."""
        scheduler = self.scheduler.scheduler
        for group, settings in zip(self.optimizer.param_groups, self.group_settings, strict=True):
            group.update({key: value for key, value in settings.items() if key != "lr"})
        scheduler.base_lrs = [settings["initial_lr"] for settings in self.group_settings]
        for group, base, factor in zip(
            self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(scheduler.last_epoch)

    def _resume_average(self, folder: Path) -> None:
        """With `--ema_decay`, the moving average saved in the training state `folder` (refused if it has none)."""
        saved = self.state.ema_weights
        if self.average is None:
            if saved:
                logger.warning("%s holds a moving average of the weights: without --ema_decay it is not used", folder)
            return
        missing = sorted(self.average.keys() - saved.keys())
        if missing:
            raise CheckpointError(
                f"{folder / TrainState.EMA}: --ema_decay, but the training state has no moving average of "
                f"{missing[0]!r} ({len(missing)} trainable tensors without one): it was saved by a run without "
                "--ema_decay; resume without it, or start again"
            )
        with torch.no_grad():
            for name, average in self.average.items():
                average.copy_(saved[name])

    def _epoch(self, progress) -> None:
        """One pass over the training sequences (the rest of it, after a mid-epoch resume)."""
        args, accelerator, state = self.args, self.accelerator, self.state
        # Each epoch's order and negatives come from (seed, epoch): a resumed run replays the same batches.
        self.generator.manual_seed(args.seed + state.epoch)
        done_in_epoch = state.step - state.epoch * len(self.loader)
        self.collator.seed = (args.seed, state.epoch, accelerator.process_index)
        self.collator.batch_index = max(done_in_epoch, 0)  # skipped batches are not collated: start at the right one
        loader = accelerator.skip_first_batches(self.loader, done_in_epoch) if done_in_epoch > 0 else self.loader
        table = self.negative_table() if args.negative_table else None
        self.ddp_model.train()
        started, first_step = time.perf_counter(), state.step
        tick = started  # the train seconds count loading and steps, not the saving of states
        for batch in loader:
            value = self.training_step(batch, table)
            state.step += 1
            state.loss_sum, state.loss_steps = state.loss_sum + value, state.loss_steps + 1
            progress.update(1)
            progress.set_postfix(loss=f"{value:.4f}", items=len(batch.items))
            if accelerator.trackers:
                lr = self.scheduler.get_last_lr()[0]
                step_log = {"train/loss": value, "train/learning_rate": lr, "train/items_per_step": len(batch.items)}
                accelerator.log(step_log, step=state.step)
            state.seconds["train"] += time.perf_counter() - tick
            # the step that ends the epoch is saved after its validation: a state saved before it would be resumed
            # past the end of training, and the last epoch never validated
            ends_epoch = state.step >= self.total_steps or state.step == (state.epoch + 1) * len(self.loader)
            if state.step % args.save_steps == 0 and not ends_epoch:
                self._save_state()
            tick = time.perf_counter()
            if state.step >= self.total_steps:  # --max_steps: the last epoch ends here, evaluated like any other
                break
        state.epoch += 1
        seconds = time.perf_counter() - started
        accelerator.log({"train/steps_per_second": (state.step - first_step) / max(seconds, 1e-9)}, step=state.step)

    def training_step(self, batch, item_table: torch.Tensor | None = None) -> float:
        """One optimizer step on a batch of `self.collator` on the accelerator's device, as every step
        of `train` runs: forward under the run's autocast, backward, gradient clipping, optimizer and scheduler
        steps. `item_table`: `negative_table()`'s embeddings with `--negative_table`. Returns the loss."""
        with self.accelerator.autocast():
            loss = self.ddp_model(**vars(batch), item_table=item_table).loss
        self.accelerator.backward(loss)
        if self.args.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.trainable.values(), self.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        if self.average is not None and not self.optimizer.step_was_skipped:  # fp16: an overflow skips the step
            self._update_average()
        return loss.item()

    def _update_average(self) -> None:
        """`--ema_decay`: average <- d * average + (1 - d) * weights, where d = min(ema_decay, (1 + n) / (10 + n))
        after n earlier optimizer steps (an fp16 step the loss scaler skipped counts, though it updates nothing), so
        that the starting weights fade fast at first (the warm-up of diffusers' `EMAModel`)."""
        updates = self.state.step
        decay = min(self.args.ema_decay, (1 + updates) / (10 + updates))
        with torch.no_grad():  # one fused update of every tensor, as torch.optim's foreach paths do
            weights = [weight.detach() for weight in self.trainable.values()]
            torch._foreach_lerp_(list(self.average.values()), weights, 1 - decay)

    @contextlib.contextmanager
    def _validated_weights(self):
        """The weights validation scores, selects and saves: the trained ones, or with `--ema_decay` their moving
        average, copied in for the block and the trained ones copied back after it."""
        if self.average is None:
            yield
            return
        with torch.no_grad():
            trained = {name: weight.detach().clone() for name, weight in self.trainable.items()}
            for name, weight in self.trainable.items():
                weight.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, weight in self.trainable.items():
                    weight.copy_(trained[name])

    def negative_table(self) -> torch.Tensor:
        """`(catalog size, D)` embeddings of the whole catalog with the current weights, in eval mode and without
        gradients: what `--negative_table` scores sampled negatives with during the epoch."""
        self.model.eval()
        table = self.model.embed_catalog(self.catalog_inputs, self.args.eval_batch_size)
        return table.to(self.accelerator.device)

    def _save_state(self) -> None:
        """Accelerate's `save_state` (model, optimizer, scheduler, RNG states), our `TrainState`, then a marker
        file: a state killed while being written is never resumed from."""
        location = self.accelerator.save_state()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.state.ema_weights = self.average or {}
            self.state.save(Path(location))
            Path(location, COMPLETE_MARKER).touch()

    def _end_of_epoch(self) -> None:
        """Validation (each process ranks its share of the users), the epoch's history entry and tracker logs,
        and the bookkeeping of the best epoch, on `_validated_weights`."""
        with self._validated_weights():
            self._validate()

    def _validate(self) -> None:
        accelerator, state = self.accelerator, self.state
        started = time.perf_counter()
        metrics = evaluate(
            self.model,
            self.catalog_inputs,
            self.eval_sets,
            batch_size=self.args.eval_batch_size,
            progress=False,
            accelerator=accelerator,
        )
        score = metrics["all"][SELECTION_METRIC]
        record = {"epoch": state.epoch, "step": state.step}
        if state.loss_steps:  # not the starting model's evaluation (epoch 0): no training step before it
            record |= {"train_loss": state.epoch_loss(), "learning_rate": self.scheduler.get_last_lr()[0]}
        state.history.append({**record, **{f"valid_{k}": v for k, v in metrics["all"].items()}})
        state.loss_sum, state.loss_steps = 0.0, 0
        logged = {f"valid/{key}": value for key, value in metrics["all"].items()}
        logged["valid/seconds"] = time.perf_counter() - started
        state.seconds["valid"] += logged["valid/seconds"]
        if "train_loss" in record:
            logged["train/epoch_loss"] = record["train_loss"]
        accelerator.log({**logged, "epoch": state.epoch}, step=state.step)
        improved = score > state.best_metric
        accelerator.print(
            f"epoch {state.epoch}: valid {SELECTION_METRIC} = {score:.4f} (full ranking)"
            + (" *best*" if improved else f" (best {state.best_metric:.4f} at epoch {state.best_epoch})")
        )
        if improved:
            state.best_metric, state.best_epoch, state.stale = score, state.epoch, 0
            state.best_weights = {name: p.detach().cpu().clone() for name, p in self.trainable.items()}
            state.best_weights.update({name: b.detach().cpu().clone() for name, b in self.model.named_buffers()})
            if self.on_best is not None and accelerator.is_main_process:
                self.on_best(self.model, metrics)
        else:
            state.stale += 1
            self._reduce_on_plateau()

    def _reduce_on_plateau(self) -> None:
        """`--lr_scheduler_type reduce_lr_on_plateau`: after every `--lr_plateau_patience` evaluations in a row
        without improvement, the learning rate is multiplied by `--lr_plateau_factor` from the next step on."""
        args, state = self.args, self.state
        if args.lr_scheduler_type != "reduce_lr_on_plateau" or state.stale % args.lr_plateau_patience:
            return
        state.lr_scale *= args.lr_plateau_factor
        for group in self.optimizer.param_groups:  # the scheduler's next step gives the same: base rate x factor
            group["lr"] *= args.lr_plateau_factor
        self.accelerator.print(f"learning rate x{args.lr_plateau_factor:g} (now x{state.lr_scale:g} of the peak)")
