"""Where APEX puts its noise by default, on CNNs, MLPs and transformers (docs/apex.md "Sites").

docs/apex.md, 'Definitions' "Where (default)": after every hidden nonlinearity, on its output. Found as

* activation *modules* (``nn.ReLU``, ``nn.GELU``, Hugging Face ``NewGELUActivation`` /
  ``SiLUActivation``, ...), a reused module once per call;
* TransformerLens MLPs: ``blocks.{l}.mlp.hook_post`` (the output of its functional GELU);
* functional activations (``F.relu``, ``F.gelu``, ``torch.tanh`` in a ``forward``) outside any
  activation module, found on one example forward and named ``MODULE/FUNCTION#K``
  (:mod:`innerprobe.core.functional`).

``sites="residual"`` is the residual stream after every block instead; ``':input'`` is the
model input, for token models the output of the token embedding.
"""

from __future__ import annotations

from torch import nn

from ..core.functional import discover, is_activation_module
from ..core.sites import Site
from ..errors import SiteError

is_activation = is_activation_module


def _hint(model: nn.Module) -> str:
    names = [n for n, _ in model.named_modules()]
    if any(n.endswith("hook_resid_post") for n in names) or _blocks(model):
        return (
            "this model has no MLP nonlinearity: sites='residual' (CLI --sites residual) puts noise on the residual "
            "stream"
        )
    types = sorted({type(m).__name__ for m in model.modules()})
    return (
        "pass sites explicitly: a module name, MODULE/FUNCTION#K for a functional call, or ':input'. "
        f"Module types present: {', '.join(types[:12])}"
    )


def default_sites(model: nn.Module, example=None) -> list[Site]:
    """Outputs of every hidden nonlinearity (module, TransformerLens ``mlp.hook_post``, or, given an
    ``example`` input batch, functional call), in module / call order."""
    names = [n for n, _ in model.named_modules()]
    posts = [n for n in names if n.endswith("mlp.hook_post")]
    if posts:  # TransformerLens: the MLP's GELU is functional; hook_post is its output
        return [Site(n) for n in posts]
    sites = [Site(n) for n, m in model.named_modules() if n and is_activation(m)]
    if example is not None:
        sites += [Site(c.site) for c in discover(model, example) if c.function and not c.in_activation_module]
    if not sites:
        raise SiteError(
            f"{type(model).__name__} has no hidden nonlinearity to put noise after"
            + ("" if example is not None else " among its modules"),
            hint=_hint(model),
        )
    return sites


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The transformer's list of blocks: TransformerLens / zoo ``blocks``, HF ``transformer.h``, ``model.layers``..."""
    best = None
    for name, m in model.named_modules():
        is_blocks = (
            isinstance(m, nn.ModuleList) and len(m) and name.split(".")[-1] in ("blocks", "h", "layers", "layer")
        )
        if is_blocks and (best is None or len(m) > len(best[1])):
            best = (name, m)
    return best


def residual_sites(model: nn.Module) -> list[Site]:
    """The residual stream after every block: ``blocks.{l}.hook_resid_post`` (TransformerLens, zoo)
    or the first output of each block of a Hugging Face model."""
    names = [n for n, _ in model.named_modules()]
    post = [n for n in names if n.endswith("hook_resid_post")]
    if post:
        return [Site(n) for n in post]
    found = _blocks(model)
    if found is None:
        raise SiteError(
            f"found no transformer blocks in {type(model).__name__} for sites='residual'",
            hint="name the block outputs explicitly, e.g. 'transformer.h.*:output.0'",
        )
    return [Site(f"{found[0]}.{i}", "output", 0) for i in range(len(found[1]))]


def embedding_site(model: nn.Module) -> Site:
    """The token-embedding output, the ``':input'`` site of a token model (input noise on embeddings)."""
    names = {id(m): n for n, m in model.named_modules()}
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            emb = None
        if emb is not None and id(emb) in names:
            return Site(names[id(emb)])
    for cand in ("hook_embed", "embed"):
        if cand in names.values():
            return Site(cand)
    for n, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            return Site(n)
    raise SiteError(
        f"':input' on token ids means the token embedding, but {type(model).__name__} has no nn.Embedding",
        hint="name the embedding's output site explicitly, or feed float inputs",
    )


def preset(model: nn.Module, sites, example=None):
    """Site list for ``sites``: None (default nonlinearities), ``'residual'``, or the user's specs."""
    if sites is None:
        return default_sites(model, example)
    if isinstance(sites, str) and sites.strip() in ("residual", "resid"):
        return residual_sites(model)
    if isinstance(sites, str) and sites.strip() in ("nonlinearities", "default", "mlp"):
        return default_sites(model, example)
    return sites
