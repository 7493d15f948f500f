"""The fairseq-free core (torch only): what every delta method is, independent of any model code.

  methods/        the registry and one module per method (its sites, parameters, Δh, count, export)
  config.py       DeltaConfig: the flags, validated once (modes and options come from the registry)
  plan.py         DeltaPlan: which method at which site with which sizes, built once per model
  presets.py      the one list of named methods (MAM = prefix ∪ scaled PA)
  modules.py      shared building blocks: Bottleneck, Composition, DeltaLinear/LinearDelta
  heads.py        head-level attention math: concat / gated / add / ReLU prefixes, the fused kernel
  accounting.py   freezing and parameter counts, read from the plan
"""
