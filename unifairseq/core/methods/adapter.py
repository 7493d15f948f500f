"""Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2021, the paper's parallel adapter):
functional form ReLU(x W_down) W_up, on the attention output or the FFN, sequential or parallel,
composed by add or scaled add (h + s * Δh, s fixed or learnable):

    parallel:   h_out <- h_out + s * f(x_in)      (x_in = the sub-layer's input)
    sequential: h_out <- h_out + s * f(h_out)

Presets: Pfeiffer (one sequential adapter after the FFN), Houlsby (one after self-attention and one
after the FFN), PA / scaled PA at the FFN, PA / SA at attention. Count: 2*r*d per sub-layer (weights;
biases are not in the paper's formula). No merge: the ReLU bottleneck adds computation.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from unifairseq.core.modules import Bottleneck, Composition, DeltaModule

from . import register_method
from .base import ALL_KINDS, Method, Spec


class Adapter(DeltaModule):
    """Bottleneck + composition + insertion form. With a layer norm on the output it computes
    h + LN(s * f(x)), as the reference code does."""

    def __init__(self, d: int, r: int, insertion: str, scalar: Union[float, str] = 1.0,
                 layernorm: str = "none", init: str = "bert"):
        super().__init__()
        assert insertion in ("parallel", "sequential"), insertion
        self.insertion = insertion
        self.form = Bottleneck(d, r, nonlinearity="relu", layernorm=layernorm, init=init)
        self.compose = Composition(scalar)

    def reset_delta_parameters(self) -> None:
        pass  # its parts (form, compose) are DeltaModules and reset themselves

    def blocks_forward(self, p, h_out: torch.Tensor, x_in: Optional[torch.Tensor] = None):
        """n adapters of this structure at once, each on its own block of rows (the delta bank,
        core/bank_group.py): p the stacked parameters, h_out/x_in [n, ..., d] dense. The same formula
        as forward in batched matmuls; None (the generic per-delta path) with a layer norm or active
        dropout."""
        form = self.form
        if type(self).forward is not Adapter.forward or form.ln_in is not None or form.ln_out is not None or (form.dropout is not None and self.training):
            return None
        src = x_in if self.insertion == "parallel" else h_out
        n, shape = h_out.size(0), h_out.shape
        sf = src.reshape(n, -1, shape[-1])  # [n, rows, d]
        z = torch.relu(torch.baddbmm(p["form.W_down.bias"].unsqueeze(1), sf, p["form.W_down.weight"].transpose(1, 2)))
        y = torch.baddbmm(p["form.W_up.bias"].unsqueeze(1), z, p["form.W_up.weight"].transpose(1, 2))
        s = p.get("compose.s")
        if s is not None:  # learnable scalar, [n, 1]
            y = y * s.view(n, 1, 1)
        elif self.compose.s != 1.0:
            y = y * self.compose.s
        return (h_out.reshape(n, -1, shape[-1]) + y).view(shape)

    def forward(self, h_out: torch.Tensor, x_in: Optional[torch.Tensor] = None) -> torch.Tensor:
        src = x_in if self.insertion == "parallel" else h_out
        assert src is not None, "a parallel adapter needs the sub-layer input"
        return h_out + self.form(src, scale=self.compose.scale)


class FFNAdapterSite(DeltaModule):
    """The FFN adapter, read at fc1 and written at fc2 of fairseq's layer (see DeltaLinear):
      parallel:   Δh = f(x) is added to the FFN output (x = FFN input, what fc1 reads)
      sequential: h + f(h) on the FFN output (Pfeiffer; Houlsby also adds one after attention)
    """

    def __init__(self, d: int, r: int, insertion: str, scalar, layernorm: str, init: str):
        super().__init__()
        self.delta_adapter = Adapter(d, r, insertion, scalar, layernorm, init)
        self._x: Optional[torch.Tensor] = None

    def reset_delta_parameters(self) -> None:
        pass  # delta_adapter resets itself

    @property
    def parallel(self) -> bool:
        return self.delta_adapter.insertion == "parallel"

    def read(self, x: torch.Tensor) -> None:
        if self.parallel:
            self._x = x

    def write(self, h: torch.Tensor) -> torch.Tensor:
        if not self.parallel:
            return self.delta_adapter(h)
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError("FFN adapter: fc2 ran without fc1 first; the layer's FFN must call fc1 then fc2")
        return self.delta_adapter(h, x)


@register_method
class BottleneckAdapter(Method):
    name = "adapter"
    attn_modes = ("adapter",)
    attn_options = ("parallel", "sequential")
    ffn_modes = ("adapter",)
    ffn_options = ("parallel", "sequential", "pfeiffer", "houlsby")
    presets = {
        "pfeiffer": dict(ffn_mode="adapter", ffn_option="sequential", ffn_bn=600, ffn_adapter_scalar=1.0,
                         ffn_adapter_init_option="bert"),
        "houlsby": dict(ffn_mode="adapter", ffn_option="houlsby", ffn_bn=200, ffn_adapter_scalar=1.0,
                        ffn_adapter_init_option="bert"),
        "pa_ffn": dict(ffn_mode="adapter", ffn_option="parallel", ffn_bn=1024, ffn_adapter_scalar=1.0,
                       ffn_adapter_init_option="lora"),
        "scaled_pa": dict(ffn_mode="adapter", ffn_option="parallel", ffn_bn=512, ffn_adapter_scalar=4.0,
                          ffn_adapter_init_option="lora"),
        "pa_attn": dict(attn_mode="adapter", attn_option="parallel", attn_bn=30),
        "sa_attn": dict(attn_mode="adapter", attn_option="sequential", attn_bn=200),
    }

    def validate(self, cfg, bad) -> None:
        if cfg.ffn_option == "pfeiffer":  # Pfeiffer = one sequential adapter after the FFN
            cfg.ffn_option = "sequential"
        if cfg.ffn_option == "houlsby" and cfg.attn_mode == "adapter":
            bad("ffn_option", "houlsby already puts a sequential adapter after attention; "
                "combine it with --attn-mode none/prefix/lora, or use --ffn-option sequential")

    def specs(self, cfg):
        out = []
        ffn = dict(scalar=cfg.ffn_adapter_scalar, layernorm=cfg.ffn_adapter_layernorm_option,
                   init=cfg.ffn_adapter_init_option)
        if cfg.attn_mode == "adapter" and cfg.attn_option in self.attn_options:
            out.append(Spec(self.name, "attn_out", ALL_KINDS, dict(ffn, r=cfg.attn_bn, insertion=cfg.attn_option,
                                                                    scalar=1.0)))
        if cfg.ffn_mode == "adapter":
            insertion = "parallel" if cfg.ffn_option == "parallel" else "sequential"
            out.append(Spec(self.name, "ffn", (), dict(ffn, r=cfg.ffn_bn, insertion=insertion)))
            if cfg.ffn_option == "houlsby":  # Houlsby's first adapter, after self-attention
                out.append(Spec(self.name, "attn_out", ("self",), dict(ffn, r=cfg.ffn_bn, insertion="sequential")))
        return out

    def formula(self, spec, shape) -> int:
        n = shape.ffn_sublayers if spec.site == "ffn" else shape.attn(spec.kinds)
        return 2 * spec.opts["r"] * shape.d * n  # W_down, W_up

    def build(self, spec, dim: int):
        o = spec.opts
        cls = FFNAdapterSite if spec.site == "ffn" else Adapter
        return cls(dim, o["r"], o["insertion"], o["scalar"], o["layernorm"], o["init"])

    def adapterhub_form(self, spec):
        """A parallel FFN adapter is adapters' ParBnConfig (tools/export_adapters.py says why only it)."""
        if spec.site != "ffn" or spec.opts["insertion"] != "parallel":
            return None
        o, why = spec.opts, None
        if o["layernorm"] not in (None, "none"):
            why = f"--ffn-adapter-layernorm-option {o['layernorm']} has no ParBnConfig equivalent"
        elif not isinstance(o["scalar"], (int, float)):
            why = "a learnable adapter scalar is not exported (ParBnConfig's 'learned' scaling was not checked)"
        return dict(config="ParBn", r=o["r"], scaling=o["scalar"], refusal=why)
