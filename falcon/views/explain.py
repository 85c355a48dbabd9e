"""Prose a teacher can point at: what a fit did, in a paragraph."""
from __future__ import annotations

from falcon.convtypes import compare, get_conv_type


def fewer_or_more(standard: float, new: float, what: str) -> str:
    """How ``new`` compares with ``standard``, in words computed from both: ``7.9× fewer weights`` when it saves at
    least 10%, ``4.2% fewer weights`` below that, ``1.4% more weights`` when it costs more (a ratio such as
    "1.0× fewer" would hide that), ``as many weights`` when equal."""
    if new == standard:
        return f"as many {what}"
    if new <= 0:
        return f"no {what}"
    if new > standard:
        return f"{new / standard - 1:.1%} more {what}"
    if standard / new >= 1.1:
        return f"{standard / new:.1f}× fewer {what}"
    return f"{1 - new / standard:.1%} fewer {what}"


def fit_summary(loaded, layer: str, conv_type: str, fit, optimum, info: dict, effect: dict,
                how: str) -> str:
    """A paragraph a teacher can point at: what was fitted, how well, what it saves and what it changes."""
    from falcon.fits import fitter_of

    ct = get_conv_type(conv_type)
    spec = effect["spec"]
    k = fit.rank_used
    cmp = compare(spec, conv_type, **fit.hparams)
    energy = info["median_energy"][k - 1] if len(info.get("median_energy") or []) >= k else None
    name = f"Rank-{k} {ct.label}" if len(ct.rank_names) == 1 else ct.display_name(**fit.hparams)
    kept = f"; the median channel keeps {energy:.1%} of its energy at this rank" if energy is not None else ""
    text = (f"Layer **{layer}** of {loaded.name} is a {spec.D}×{spec.D} convolution from {spec.M} to {spec.N} "
            f"channels. **{name}** {fitter_of(conv_type).structure(fit.hparams)}{kept}, "
            f"so the best error its {optimum.method} fit reaches is **{optimum.relative_error:.3f}** "
            f"(exact from rank {fit.full_rank} on). The {how} reaches **{fit.relative_error:.3f}**. The layer "
            f"then holds {cmp.cost.params:,} instead of {cmp.standard.params:,} weights "
            f"(**{fewer_or_more(cmp.standard.params, cmp.cost.params, 'weights')}**) and needs "
            f"{fewer_or_more(cmp.standard.macs, cmp.cost.macs, 'MACs')}. "
            f"On {effect['samples']} its output changes by {effect['output_error']:.1%}")
    if effect.get("accuracy") is not None:
        text += (f", and the network, with only this layer replaced and no fine-tuning, classifies "
                 f"**{effect['accuracy']:.1%}** of the held-out digits correctly (original: {effect['baseline_accuracy']:.1%}).")
    else:
        text += "."
    return text
