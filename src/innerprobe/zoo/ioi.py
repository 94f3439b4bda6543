"""Indirect-object identification (IOI) data: templated sentences, counterfactuals, position indices.

The task of Wang et al. 2022 ("Interpretability in the Wild", arXiv 2211.00593, §2): in
"When Mary and John went to the store, John gave a drink to" the next word is the *indirect
object* (IO) " Mary", the name that is not repeated; the repeated name is the *subject* (S, at
positions S1 and S2). Here the text is word-level over a small generated vocabulary (names,
places, objects, template words), so every name is one token, as in GPT-2's IOI dataset.

* Templates come in both orders, ABBA (IO first: "When A and B ..., B gave ... to") and BABA (S
  first: "When B and A ..., B gave ... to"); ``split`` picks disjoint template and name sets:
  ``"train"`` (what the zoo model is trained on), ``"dev"`` (tuning) and ``"test"`` (held-out
  names AND held-out templates; the card's floors are measured there).
* Held-out names never occur in a training IOI prompt. They do occur in *background* sentences
  (:func:`background`), non-IOI text the model is also trained on, so that their embeddings and
  unembeddings are trained at all (an untrained token could never be predicted).
* Counterfactuals, as IOI papers use them (Wang et al. §3): :meth:`IOIBatch.abc` keeps template,
  place and object but draws three fresh distinct names for IO, S1 and S2 (the "ABC" dataset: no
  name is repeated, so the IO signal is gone); :meth:`IOIBatch.swap` exchanges IO and S (the
  answer flips, so the logit difference flips sign). Both keep every position, so a pair
  (x_r, x_c) is aligned token by token.
* ``positions``: per-example index tensors ``io``, ``s1``, ``s2``, ``end`` (the last prompt token,
  where the answer is predicted) and ``s1p1`` (S1 + 1). Prompts are right-padded with ``<pad>``
  (causal attention: padding never changes a prompt position's output).

Everything is reproducible from ``seed``: ``sample(n, seed, split)`` draws with its own
``torch.Generator``; the name and template splits are fixed (the same for every seed).
Docs: docs/zoo.md (section "IOI").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..errors import ConfigError

SPLITS = ("train", "dev", "test")
PAD, BOS = "<pad>", "<bos>"

# 100 single-token first names; the last 20 are held out (10 dev, 10 test).
NAMES = [
    "Mary",
    "John",
    "Alice",
    "Bob",
    "James",
    "Linda",
    "Robert",
    "Susan",
    "Michael",
    "Karen",
    "William",
    "Lisa",
    "David",
    "Nancy",
    "Richard",
    "Betty",
    "Joseph",
    "Sandra",
    "Thomas",
    "Ashley",
    "Charles",
    "Emily",
    "Daniel",
    "Donna",
    "Matthew",
    "Carol",
    "Anthony",
    "Ruth",
    "Mark",
    "Sharon",
    "Paul",
    "Laura",
    "Steven",
    "Amy",
    "Andrew",
    "Anna",
    "Kevin",
    "Rachel",
    "Brian",
    "Helen",
    "Oliver",
    "Grace",
    "Henry",
    "Chloe",
    "Jacob",
    "Nora",
    "Lucas",
    "Julia",
    "Ethan",
    "Clara",
    "Victor",
    "Irene",
    "Simon",
    "George",
    "Emma",
    "Peter",
    "Sophie",
    "Jack",
    "Lucy",
    "Adam",
    "Ella",
    "Ryan",
    "Mia",
    "Sam",
    "Zoe",
    "Luke",
    "Ivy",
    "Owen",
    "Ruby",
    "Noah",
    "Hannah",
    "Leo",
    "Eva",
    "Dylan",
    "Rose",
    "Max",
    "Jane",
    "Felix",
    "Kate",
    "Isaac",
    "Maya",
    "Tom",
    "Sara",
    "Ben",
    "Alma",
    "Paula",
    "Martin",
    "Vera",
    "Hugo",
    "Leah",
    "Oscar",
    "Ingrid",
    "Dennis",
    "Flora",
    "Walter",
    "Agnes",
    "Bruno",
    "Greta",
    "Milo",
    "Nadia",
]
N_DEV_NAMES = N_TEST_NAMES = 10
PLACES = [
    "store",
    "garden",
    "school",
    "park",
    "station",
    "hospital",
    "office",
    "restaurant",
    "library",
    "market",
    "beach",
    "museum",
    "river",
    "church",
    "farm",
]
OBJECTS = [
    "drink",
    "ring",
    "kiss",
    "bone",
    "basketball",
    "computer",
    "necklace",
    "snack",
    "apple",
    "book",
    "letter",
    "flower",
    "hat",
    "ticket",
    "bag",
]

# Templates: "{A}" and "{B}" are the first and second name, "{S}" the subject's second mention,
# "{P}" a place, "{O}" an object. ABBA fills A=IO, B=S; BABA fills A=S, B=IO. The prompt ends at END.
TEMPLATES = {
    "train": (
        "When {A} and {B} went to the {P} , {S} gave a {O} to",
        "After {A} and {B} went to the {P} , {S} gave a {O} to",
        "Then , {A} and {B} went to the {P} . {S} gave a {O} to",
        "While {A} and {B} were working at the {P} , {S} gave a {O} to",
        "Then , {A} and {B} had a lot of fun at the {P} . {S} gave a {O} to",
        "When {A} and {B} got a {O} at the {P} , {S} decided to give it to",
        "Then , {A} and {B} were thinking about going to the {P} . {S} wanted to give a {O} to",
        "After the lunch , {A} and {B} went to the {P} . {S} gave a {O} to",
        "Friends {A} and {B} found a {O} at the {P} . {S} gave it to",
        "Then , {A} and {B} had a long argument , and afterwards {S} said to",
        "While {A} and {B} were commuting to the {P} , {S} gave a {O} to",
        "The {P} {A} and {B} went to had a {O} . {S} gave it to",
    ),
    "dev": (
        "Afterwards , {A} and {B} went to the {P} . Then , {S} gave a {O} to",
        "When {A} and {B} were working at the {P} , {S} decided to give a {O} to",
        "Then , {A} and {B} had a long argument . Afterwards {S} said to",
    ),
    "test": (
        "After {A} and {B} had a lot of fun at the {P} , {S} gave a {O} to",
        "While {A} and {B} were thinking about going to the {P} , {S} wanted to give it to",
        "Then , {A} and {B} found a {O} at the {P} . Afterwards , {S} gave it to",
    ),
}

# Background text (trained on with every name, held-out ones included; never an IOI prompt): a first
# mention of a name is unpredictable; a later mention of the *only* name in the sentence is a copy, so
# copying a name to "... to" is learned for every name, while choosing between two names (IOI) is
# learned on train names only.
BACKGROUND = (
    "{A} went to the {P} with {B} .",
    "The {O} at the {P} was given to {A} .",
    "{A} said to {B} that the {O} was at the {P} .",
    "Afterwards , {A} found a {O} at the {P} . Then the {O} was given to {A} .",
    "When {A} went to the {P} , a {O} was given to {A} .",
    "Then , {A} had a lot of fun at the {P} . Everyone gave a {O} to {A} .",
    "While {A} was working at the {P} , the {O} was given to {A} .",
    "{A} met {B} at the {P} . Later , {A} met {B} again .",
)


def _words() -> list[str]:
    words = set()
    for t in [*TEMPLATES["train"], *TEMPLATES["dev"], *TEMPLATES["test"], *BACKGROUND]:
        words.update(w for w in t.split() if not w.startswith("{"))
    return sorted(words)


VOCAB: tuple[str, ...] = (PAD, BOS, *NAMES, *PLACES, *OBJECTS, *_words())
TOKEN_ID: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
assert len(TOKEN_ID) == len(VOCAB), "a word is both a name/place/object and a template word"
PAD_ID, BOS_ID = TOKEN_ID[PAD], TOKEN_ID[BOS]
NAME_IDS = torch.tensor([TOKEN_ID[n] for n in NAMES])


def split_names(split: str) -> list[str]:
    """The name pool of ``split``: the first 80 names train, the next 10 dev, the last 10 test."""
    _check_split(split)
    n_train = len(NAMES) - N_DEV_NAMES - N_TEST_NAMES
    return {
        "train": NAMES[:n_train],
        "dev": NAMES[n_train : n_train + N_DEV_NAMES],
        "test": NAMES[n_train + N_DEV_NAMES :],
    }[split]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown IOI split {split!r}", hint=f"use one of {', '.join(SPLITS)}")


def encode(text: str) -> list[int]:
    """Word-level token ids of ``text`` (words separated by spaces), with ``<bos>`` first."""
    bad = [w for w in text.split() if w not in TOKEN_ID]
    if bad:
        raise ConfigError(
            f"words not in the IOI vocabulary: {bad[:5]}",
            hint="names, places and objects are zoo.ioi.NAMES / PLACES / OBJECTS",
        )
    return [BOS_ID] + [TOKEN_ID[w] for w in text.split()]


def decode(ids) -> str:
    return " ".join(VOCAB[int(i)] for i in ids if int(i) != PAD_ID)


@dataclass
class IOIBatch:
    """``tokens`` [N, T] (right-padded), ``positions`` {io, s1, s2, end, s1p1: [N]}, answer ids ``io``
    and ``s`` [N], and what made each prompt (``template`` index within its split, ``order``
    0 = ABBA / 1 = BABA, ``place``, ``obj`` ids). Unpacks as ``tokens, positions, (io, s)``."""

    tokens: torch.Tensor
    positions: dict[str, torch.Tensor]
    io: torch.Tensor
    s: torch.Tensor
    split: str
    template: torch.Tensor
    order: torch.Tensor
    place: torch.Tensor
    obj: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __iter__(self):
        return iter((self.tokens, self.positions, (self.io, self.s)))

    def __getitem__(self, idx) -> IOIBatch:
        return replace(
            self,
            tokens=self.tokens[idx],
            positions={k: v[idx] for k, v in self.positions.items()},
            io=self.io[idx],
            s=self.s[idx],
            template=self.template[idx],
            order=self.order[idx],
            place=self.place[idx],
            obj=self.obj[idx],
        )

    @property
    def lengths(self) -> torch.Tensor:
        return self.positions["end"] + 1

    def text(self, i: int) -> str:
        return decode(self.tokens[i])

    def abc(self, seed: int) -> IOIBatch:
        """The ABC counterfactual: same template, place, object and positions; IO, S1 and S2 replaced
        by three distinct names (none of them the prompt's own) from the same split's pool."""
        gen = torch.Generator().manual_seed(int(seed))
        pool = torch.tensor([TOKEN_ID[n] for n in split_names(self.split)])
        new = torch.empty(len(self), 3, dtype=torch.long)
        for i in range(len(self)):
            cand = pool[(pool != self.io[i]) & (pool != self.s[i])]
            new[i] = cand[torch.randperm(len(cand), generator=gen)[:3]]
        return self._renamed(new[:, 0], new[:, 1], new[:, 2], kind="abc")

    def swap(self) -> IOIBatch:
        """IO and S exchanged everywhere (the answer flips; positions unchanged)."""
        return self._renamed(self.s, self.io, self.io, kind="swap")

    def _renamed(self, io: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, *, kind: str) -> IOIBatch:
        tok = self.tokens.clone()
        r = torch.arange(len(self))
        tok[r, self.positions["io"]] = io
        tok[r, self.positions["s1"]] = s1
        tok[r, self.positions["s2"]] = s2
        return replace(self, tokens=tok, io=io.clone(), s=s1.clone(), meta={**self.meta, "counterfactual": kind})


def _fill(template: str, a: str, b: str, s: str, place: str, obj: str) -> tuple[list[int], dict[str, int]]:
    """Token ids of one prompt and the token index of each name slot (``<bos>`` is index 0)."""
    ids, where = [BOS_ID], {}
    for w in template.split():
        slot = {"{A}": ("A", a), "{B}": ("B", b), "{S}": ("S", s), "{P}": (None, place), "{O}": (None, obj)}.get(w)
        if slot is not None and slot[0] is not None:
            where[slot[0]] = len(ids)
        ids.append(TOKEN_ID[slot[1]] if slot is not None else TOKEN_ID[w])
    return ids, where


def sample(n: int, seed: int = 0, split: str = "test", *, templates=None, order: str = "both") -> IOIBatch:
    """``n`` IOI prompts of ``split`` drawn with ``seed``: IO and S two distinct names of the split's
    pool, a random template of the split (or of ``templates``, indices into it), ABBA or BABA
    (``order="both"``: half each, in random order), a random place and object."""
    _check_split(split)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    temps = TEMPLATES[split]
    allowed = list(range(len(temps))) if templates is None else [int(t) for t in templates]
    if not allowed or any(not 0 <= t < len(temps) for t in allowed):
        raise ConfigError(f"templates {templates!r} are not indices of the {len(temps)} {split} templates")
    if order not in ("both", "ABBA", "BABA"):
        raise ConfigError(f"order must be 'both', 'ABBA' or 'BABA', got {order!r}")
    gen = torch.Generator().manual_seed(int(seed))
    names = split_names(split)
    tmpl = torch.tensor(allowed)[torch.randint(len(allowed), (n,), generator=gen)]
    ords = {
        "ABBA": torch.zeros(n, dtype=torch.long),
        "BABA": torch.ones(n, dtype=torch.long),
        "both": torch.randperm(n, generator=gen) % 2,
    }[order]
    pair = torch.stack([torch.randperm(len(names), generator=gen)[:2] for _ in range(n)])
    place = torch.randint(len(PLACES), (n,), generator=gen)
    obj = torch.randint(len(OBJECTS), (n,), generator=gen)
    rows, pos = [], {k: [] for k in ("io", "s1", "s2", "end", "s1p1")}
    for i in range(n):
        io, s = names[int(pair[i, 0])], names[int(pair[i, 1])]
        a, b = (io, s) if int(ords[i]) == 0 else (s, io)
        ids, where = _fill(temps[int(tmpl[i])], a, b, s, PLACES[int(place[i])], OBJECTS[int(obj[i])])
        io_at, s1_at = (where["A"], where["B"]) if int(ords[i]) == 0 else (where["B"], where["A"])
        for k, v in (("io", io_at), ("s1", s1_at), ("s2", where["S"]), ("end", len(ids) - 1), ("s1p1", s1_at + 1)):
            pos[k].append(v)
        rows.append(ids)
    T = max(len(r) for r in rows)
    tokens = torch.full((n, T), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    positions = {k: torch.tensor(v) for k, v in pos.items()}
    ar = torch.arange(n)
    return IOIBatch(
        tokens,
        positions,
        tokens[ar, positions["io"]].clone(),
        tokens[ar, positions["s1"]].clone(),
        split,
        tmpl,
        ords,
        torch.tensor([TOKEN_ID[PLACES[int(p)]] for p in place]),
        torch.tensor([TOKEN_ID[OBJECTS[int(o)]] for o in obj]),
        {"seed": int(seed), "counterfactual": None},
    )


def background(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` right-padded background sentences [n, T] over ALL names (held-out ones included)."""
    rows = []
    for _ in range(n):
        t = BACKGROUND[int(torch.randint(len(BACKGROUND), (1,), generator=generator))]
        a, b = (NAMES[int(i)] for i in torch.randperm(len(NAMES), generator=generator)[:2])
        p = PLACES[int(torch.randint(len(PLACES), (1,), generator=generator))]
        o = OBJECTS[int(torch.randint(len(OBJECTS), (1,), generator=generator))]
        rows.append(encode(t.format(A=a, B=b, P=p, O=o)))
    T = max(len(r) for r in rows)
    out = torch.full((n, T), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def end_logits(logits: torch.Tensor, batch: IOIBatch) -> torch.Tensor:
    """Logits [N, V] at each prompt's END position (where the answer is predicted)."""
    return logits[torch.arange(len(batch)), batch.positions["end"]]


def logit_diff(logits: torch.Tensor, batch: IOIBatch) -> torch.Tensor:
    """Per-prompt logit(IO) - logit(S) at END [N] (Wang et al. §2, the IOI metric)."""
    e = end_logits(logits, batch)
    r = torch.arange(len(batch))
    return e[r, batch.io] - e[r, batch.s]


def accuracy_metrics(logits: torch.Tensor, batch: IOIBatch) -> dict:
    """``logit_diff_positive`` (share with IO - S > 0), ``io_top1`` (share where IO is the top token of
    the whole vocabulary), ``mean_logit_diff`` and ``io_prob`` (mean softmax probability of IO)."""
    ld = logit_diff(logits, batch)
    e = end_logits(logits, batch)
    return {
        "logit_diff_positive": float((ld > 0).float().mean()),
        "io_top1": float((e.argmax(-1) == batch.io).float().mean()),
        "mean_logit_diff": float(ld.mean()),
        "io_prob": float(e.softmax(-1)[torch.arange(len(batch)), batch.io].mean()),
        "n": len(batch),
    }
