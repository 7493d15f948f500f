"""Speed, memory and size of every method against full fine-tuning and a frozen base.

    unifairseq-bench                          # bart_base shapes, all presets, CPU (2 threads)
    unifairseq-bench --size large --methods mam lora_attn
    unifairseq-bench --device cuda --fp16     # on a machine with a GPU
    unifairseq-bench --tiny --methods mam lora_attn --steps 2   # seconds; the smoke test
    unifairseq-bench --malloc default --optimizer loop           # without the two CPU fixes
    unifairseq-bench --methods mam --compare-with ../main-before  # two code versions, interleaved

Prints markdown tables and writes JSON (``--json``, default ``runs/bench.json``). Each method is
measured in its own fresh subprocess (memory high-water mark and threads isolated), which builds the
model as ``fairseq-train`` would (fairseq's argument parsing and ``build_model``, see
``unifairseq.tools.count``) with a 50,264-symbol dictionary and random weights and token ids.

Rounds (``--rounds N``, default 3). On a shared machine one run's ratios move by about +-10%
(training) and +-25% (decoding) from run to run, so the rows are interleaved: round 1 runs every row
once, then round 2, and so on (each round starts one row further on), and a change of load hits all
rows alike. Every ratio is taken within a round (method / floor of the same round); the tables show
per row the median over rounds and the spread (min-max), each target is the median of its per-round
ratios, with the spread, and is met or missed on that median. Targets are judged only on bart shapes
with at least 3 rounds (``--tiny`` and fewer rounds show them, unjudged). The JSON keeps every round's
raw worker results under ``rounds``; ``results`` holds the medians (``<key>_range`` = [min, max]).

``--compare-with PATH`` (a second checkout of this repository, e.g. a ``git worktree`` of the old
commit): in each round every row also runs with PATH's code (the worker's cwd and PYTHONPATH), the two
sides of a row back to back in alternating order, and a "before vs after" table gives per row the
after/before ratio within each round, median (min-max), flagging SLOWER where the after side's fastest
round is slower than the before side's slowest (JSON: ``before``, ``compare``).

Layout: ``worker`` (one row, in its subprocess), ``mergecheck`` (merged vs unmerged LoRA decode),
``rounds`` (the interleaved subprocesses), ``report`` (ratios, medians, targets, tables), ``cli``.

Rows
  full     plain fairseq ``bart_<size>``, every weight trainable (full fine-tuning)
  frozen   the frozen-base floor: plain ``bart_<size>``, every weight frozen, no delta. A forward
           hook on the token embedding module (shared by encoder and decoder in BART) calls
           ``requires_grad_()`` on its output, so the backward pass runs through the whole network
           and computes every activation gradient, but no weight gradient; there is no optimizer step.
  none     (diagnostic, not in the default list) the floor through unifairseq's layers instead of
           fairseq's: ``lora_attn_bart_<size>`` with LoRA merged (at initialisation W_up = 0, so the
           weights are the base's), everything frozen, the same hook.
  frozen_2d the same floor with the output projection applied to a 2-D view of the decoder features
           (forward hooks on ``output_projection``), as unifairseq's delta decoders do. torch's matmul
           computes fairseq's B x T x C features (a transpose) times a weight that does not require
           grad -- any frozen model's output projection -- as a bmm over B broadcast copies of the
           vocabulary matrix instead of one mm (measured here: 5.5x slower per decoding step). The
           targets compare against the faster of the two floors.
  <preset> ``<preset>_bart_<size>`` as ``fairseq-train --arch`` builds it (base frozen).

Training step: the model's forward on a batch of B x S source / B x T target tokens (training mode,
so dropout is on), cross entropy (fp32, sum over tokens, padding ignored) on the logits, ``backward``
and ``torch.optim.Adam.step`` over the trainable parameters -- the same computations fairseq's Trainer
and criterion run, called directly (no Trainer, no label smoothing, no gradient clipping). Adam is
torch's fused implementation by default (``--optimizer fused``, also what ``--optimizer torch_adam``
gives a fairseq-train run through unifairseq); ``--optimizer loop`` is torch's single-tensor Adam, which
like fairseq's own CPU Adam allocates full-size temporaries for every parameter on every step (on this
machine 0.21 s a step for MAM's 33.5M trained parameters, against 0.015 s fused). Reported:
median of ``--steps`` steps after ``--warmup`` steps. On CUDA with ``--fp16`` the model is cast to
fp16 and, as fairseq's FP16Optimizer does, Adam updates fp32 master copies of the trainable
parameters (static loss scale 128).

Memory: CPU: the resident-set high-water mark is reset (``/proc/self/clear_refs``) after the model
and optimizer are built, and ``ru_maxrss`` after training minus the RSS before training is the
training overhead (activations, gradients, optimizer state); the absolute peak is reported too.
CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated memory before training.

Sizes: bytes of ``torch.save`` into memory of what resumes training (the model's ``state_dict()``
-- delta-only for delta models, with their base fingerprint -- plus the optimizer state) and of the
exported inference file (delta tensors with the prefix MLP folded into static vectors, no optimizer;
the full state dict for full fine-tuning).

Decoding: fairseq's ``SequenceGenerator`` (beam ``--beam``) on the first ``--gen-batch`` source
sentences, with ``min_len = max_len = --gen-len`` so that every model decodes exactly the same number
of steps whatever its (random) weights predict; median of ``--gen-runs`` runs. LoRA
is timed unmerged and merged (``DeltaLinear.merge()`` on every LoRA site), with W_up drawn at random
first (std 0.02; training leaves it near its zero initialisation) so that merging changes the weights.
The merged decode is checked against the unmerged one (``mergecheck``: the merged model must give the
unmerged hypotheses the same log-probabilities, and the same tokens unless that was a tie); any
failure is listed under ``merged_decode_check`` in the JSON and makes the exit status 1. Prefixes are served from the inference cache (``PrefixProvider``
runs its MLP once per set of weights). The base-model reference is the ``full`` row's decode (plain
fairseq ``bart_<size>``); the ``frozen`` row decodes the same model again, which shows the noise.
The warm-up is one short decode (4 tokens).
"""
