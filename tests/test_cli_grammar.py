"""One CLI grammar (issue 16.4), checked over every command's ``--help``: an option name has one
meaning (one value type, one short flag) wherever it appears, a short flag names one option,
booleans read ``--flag/--no-flag``, counts are ``--inputs/-n`` (never a file), input files are
``--data``, and a required ``--out`` is marked so."""

from collections import defaultdict

import pytest

from innerprobe.cli import command, main


def _commands(cmd, prefix=""):
    subs = getattr(cmd, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from _commands(sub, f"{prefix} {name}".strip())
    else:
        yield prefix, cmd


COMMANDS = dict(_commands(command()))


def _options():
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if p.param_type_name == "option":
                yield name, p


def _kind(p) -> str:
    if p.is_flag:
        return "flag"
    desc = getattr(p, "type_descriptor", None)
    t = str(desc.annotation if desc is not None else p.type).lower()
    return "int" if "int" in t else "float" if "float" in t else "text"


# the same meaning, where one command also accepts a file of one value per input
WIDER = {"--position": "perturb also takes a .npy/.pt file of one position per input"}


def test_every_option_name_has_one_kind_and_one_short_flag():
    kinds, shorts, longs_of_short = defaultdict(set), defaultdict(set), defaultdict(set)
    for cmd, p in _options():
        long = next(o for o in p.opts if o.startswith("--"))
        kinds[long].add(_kind(p))
        for o in p.opts:
            if not o.startswith("--"):
                shorts[long].add(o)
                longs_of_short[o].add(long)
    mixed = {k: v for k, v in kinds.items() if len(v) > 1 and k not in WIDER}
    assert not mixed, f"option names with more than one kind of value: {mixed}"
    assert all(len(v) <= 1 for v in shorts.values()), {k: v for k, v in shorts.items() if len(v) > 1}
    assert all(len(v) == 1 for v in longs_of_short.values()), {k: v for k, v in longs_of_short.items() if len(v) > 1}


def test_counts_files_and_flags_follow_the_grammar():
    for cmd, p in _options():
        long = next(o for o in p.opts if o.startswith("--"))
        if long == "--inputs":
            assert _kind(p) == "int" and "-n" in p.opts, f"{cmd}: --inputs is the number of inputs (-n)"
        if "-n" in p.opts:
            assert long == "--inputs", f"{cmd}: -n means --inputs, not {long}"
        if long == "--data":
            assert _kind(p) == "text", f"{cmd}: --data names the input file / data set"
        if p.is_flag and long not in ("--help", "--version"):
            assert p.secondary_opts == ["--no-" + long[2:]], f"{cmd} {long}: booleans read --flag/--no-flag"


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_help_shows_flags_as_pairs_without_value_placeholders(cmd, capsys):
    assert main([*cmd.split(), "--help"]) == 0
    text = capsys.readouterr().out
    flags = [ln for ln in text.splitlines() if "--no-" in ln]
    assert all("<bool>" not in ln for ln in flags), flags
    assert len(flags) == sum(p.is_flag for p in COMMANDS[cmd].params if p.param_type_name == "option")


def test_patch_marks_out_as_required():
    p = next(p for p in COMMANDS["patch"].params if "--out" in getattr(p, "opts", ()))
    assert p.required or "required" in (p.help or "")
