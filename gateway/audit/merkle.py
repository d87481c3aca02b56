"""Merkle tree hashing, inclusion and consistency proofs (RFC 9162 sections 2.1.1-2.1.4).

Pure functions on hashlib. Proof *generation* is written against a `subtree(lo, hi)`
callback (the hash of leaves [lo, hi)), so the same code serves an in-memory list of
leaves and the database, where every complete ("perfect") subtree hash is stored once
(see `perfect_pieces`): a proof at any size costs O(log n) stored hashes, never a rehash.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """MTH of one entry: SHA-256(0x00 || entry) (domain-separated from nodes)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) from the leaf hashes, bottom-up in O(n) (same result as the recursion)."""
    if not hashes:
        return EMPTY_ROOT
    stack: list[tuple[int, bytes]] = []  # (size, hash) of perfect subtrees, left to right
    for h in hashes:
        size, cur = 1, h
        while stack and stack[-1][0] == size:
            cur = node_hash(stack.pop()[1], cur)
            size *= 2
        stack.append((size, cur))
    return fold_right([h for _, h in stack])


def fold_right(pieces: Sequence[bytes]) -> bytes:
    """Hash of a range given its perfect subtrees left to right (largest first)."""
    acc = pieces[-1]
    for h in reversed(pieces[:-1]):
        acc = node_hash(h, acc)
    return acc


def perfect_pieces(lo: int, hi: int) -> list[tuple[int, int]]:
    """Decompose [lo, hi) as it appears in a tree into perfect subtrees (level, index).

    Every range a proof needs is either perfect (aligned, power-of-two wide) or the right
    edge of a tree, which splits into the binary digits of its width, largest first.
    """
    pieces, pos = [], lo
    while pos < hi:
        level = (hi - pos).bit_length() - 1
        while pos % (1 << level):
            level -= 1
        pieces.append((level, pos >> level))
        pos += 1 << level
    return pieces


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes form PATH(index, D[size]), in proof order (leaf upward)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    out, lo, hi = [], 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    return out[::-1]


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes form PROOF(first, D[second]) (RFC 9162 2.1.4.1)."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first == 0 or first == second:
        return []
    out, lo, hi, m, whole = [], 0, second, first, True
    while m != hi - lo:
        k = split_point(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        out.append((lo, hi))
    return out[::-1]


def inclusion_proof(index: int, size: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    return [subtree(lo, hi) for lo, hi in inclusion_ranges(index, size)]


def consistency_proof(first: int, second: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    return [subtree(lo, hi) for lo, hi in consistency_ranges(first, second)]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does `proof` place leaf hash `leaf` at `index` under `root`?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: is the tree of size `second` an append-only extension of `first`?"""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


class MemoryTree:
    """A tree over leaf hashes held in memory, with perfect subtrees cached (the verifier's)."""

    def __init__(self, leaf_hashes: Sequence[bytes] = ()):
        self.levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    def __len__(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        level, cur = 0, leaf
        while True:
            row = self.levels[level]
            row.append(cur)
            if len(row) % 2:
                return
            cur = node_hash(row[-2], row[-1])
            level += 1
            if len(self.levels) == level:
                self.levels.append([])

    def subtree(self, lo: int, hi: int) -> bytes:
        if not 0 <= lo < hi <= len(self):
            raise ValueError(f"range [{lo}, {hi}) is outside a tree of size {len(self)}")
        return fold_right([self.levels[lv][i] for lv, i in perfect_pieces(lo, hi)])

    def root(self, size: int | None = None) -> bytes:
        size = len(self) if size is None else size
        return EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, len(self) if size is None else size, self.subtree)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        return consistency_proof(first, len(self) if second is None else second, self.subtree)
