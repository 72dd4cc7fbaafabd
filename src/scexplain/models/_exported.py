"""Adapter for a ``torch.export`` program (:class:`torch.export.ExportedProgram`) from genes to outputs.

An exported program is a graph of ATen operators with its weights: it can be saved and loaded without pickle
(``torch.export.save`` / ``torch.export.load``), which makes it the safe file format for torch models. Its module
(``ep.module()``) calls ``torch.ops.aten.*`` operators, which the DeepLIFT rules cover under their own names, so it
is explained exactly like the eager module it was exported from.

The program must take one input, cells × genes, with a dynamic first dimension::

    ep = torch.export.export(model.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("cells")},))
"""

from __future__ import annotations

from ._torch import TorchAdapter

__all__ = ["ExportedAdapter", "program_width"]

#: ``aten`` operators whose training flag must be false (name → position of the flag)
_TRAINING_FLAG = {"batch_norm": 5, "dropout": 2, "native_dropout": 2, "native_batch_norm": 5,
                  "_native_batch_norm_legit": 5, "_native_batch_norm_legit_functional": 5}

_EXPORT_HINT = (
    "export the model as torch.export.export(model.eval(), (x,), dynamic_shapes=({0: torch.export.Dim('cells')},)) "
    "with x a cells × genes tensor"
)


def _module_class():
    import torch

    class ProgramModule(torch.nn.Module):
        """``ep.module()`` in a container whose ``train()``/``eval()`` do not reach it (exported graphs fix the mode)."""

        def __init__(self, graph_module):
            super().__init__()
            self.program = graph_module

        def train(self, mode: bool = True):
            self.training = mode
            return self

        def forward(self, x):
            return self.program(x)

    return ProgramModule


def _user_input(program):
    """The placeholder node of the program's one user input."""
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        raise TypeError(
            f"The exported program takes {len(names)} inputs; scexplain explains programs of one input (cells × "
            f"genes): {_EXPORT_HINT}."
        )
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
    return node


def program_width(program) -> int:
    """The number of genes an exported program takes, from its input spec (a ``cells × genes`` tensor).

    Raises
    ------
    TypeError
        The program does not take exactly one 2-D tensor, or returns more than one output.
    ValueError
        Its number of cells is fixed or bounded (exported without a dynamic first dimension).
    """
    import torch

    value = _user_input(program).meta.get("val")
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
        raise TypeError(f"The exported program's input has shape {tuple(shape or ())}, not cells × genes: "
                        f"{_EXPORT_HINT}.")
    if len(program.graph_signature.user_outputs) != 1:
        raise TypeError(f"The exported program returns {len(program.graph_signature.user_outputs)} outputs; return "
                        "one cells × outputs tensor.")
    cells = shape[0]
    if not isinstance(cells, torch.SymInt):
        raise ValueError(f"The exported program takes exactly {cells} cells (a static first dimension): "
                         f"{_EXPORT_HINT}.")
    bounds = program.range_constraints.get(cells.node.expr)
    if bounds is not None and bool(bounds.upper < 2**62):  # int_oo when unbounded (its is_finite is True)
        raise ValueError(f"The exported program takes at most {int(bounds.upper)} cells; explaining runs it on "
                         f"large batches: {_EXPORT_HINT} (a Dim without max).")
    if bounds is not None and int(bounds.lower) > 2:  # 0 and 1 (Dim.AUTO: 2) are not guarded
        raise ValueError(f"The exported program takes at least {int(bounds.lower)} cells; explaining runs it on "
                         f"batches of 2 and more: {_EXPORT_HINT} (a Dim without min).")
    return int(shape[1])


def _check_eval_mode(program) -> None:
    """Refuse a program exported in training mode (batch statistics, random dropout)."""
    for node in program.graph.nodes:
        name = getattr(node.target, "_schema", None)
        name = name.name.split("::")[-1] if name is not None else None
        pos = _TRAINING_FLAG.get(name)
        if pos is None:
            continue
        flag = node.args[pos] if len(node.args) > pos else node.kwargs.get("training", node.kwargs.get("train"))
        if flag is True:
            raise ValueError(
                f"The exported program runs {name} in training mode (batch statistics or random dropout): call "
                "model.eval() before torch.export.export."
            )


class ExportedAdapter(TorchAdapter):
    """A :class:`torch.export.ExportedProgram` mapping cells × genes to cells × outputs.

    Parameters
    ----------
    program
        The exported program (e.g. from :func:`torch.export.load`); its weights are the program's own.
    output_names
        Names of the outputs, or ``None``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    >>> ep = torch.export.export(net, (torch.randn(4, 5),), dynamic_shapes=({0: torch.export.Dim("cells")},))
    >>> ExportedAdapter(ep).n_inputs
    5
    """

    def __init__(self, program, *, output_names=None):
        width = program_width(program)
        _check_eval_mode(program)
        self.program = program
        super().__init__(_module_class()(program.module()), n_inputs=width, output_names=output_names)

    def __getstate__(self):
        """Picklable for dask workers: the program travels as its ``torch.export.save`` archive.

        Its graph module cannot be pickled; the dtype the module was explained in travels with it.
        """
        import io

        import torch

        buffer = io.BytesIO()
        torch.export.save(self.program, buffer)
        first = next(iter(self.module.parameters()), None)
        state = {k: v for k, v in self.__dict__.items() if k not in ("program", "module")}
        state["_archive"] = buffer.getvalue()
        state["_dtype"] = None if first is None else first.dtype
        return state

    def __setstate__(self, state):
        import io

        import torch

        archive, dtype = state.pop("_archive"), state.pop("_dtype")
        self.__dict__.update(state)
        self.program = torch.export.load(io.BytesIO(archive))  # our own archive, written just above
        self.module = _module_class()(self.program.module())
        if dtype is not None:
            self.module.to(dtype=dtype)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()
