"""The Merkle tree against published RFC 6962 vectors and against pymerkle (oracle)."""
from __future__ import annotations

import random

import pytest
from pymerkle import InmemoryTree

from gateway.audit import merkle

# transparency-dev/merkle testonly/constants.go and reference_test.go (RFC 6962 hashing)
LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
H = {
    "6e34": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a2": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "fac5": "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "5f08": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "bc1a": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "6b47": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    "ca85": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "d37e": "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "0ebc": "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
}
INCLUSION = [(0, 1, []), (0, 2, ["96a2"]), (1, 2, ["6e34"]), (2, 3, ["fac5"]),
             (1, 5, ["6e34", "5f08", "bc1a"]), (0, 8, ["96a2", "5f08", "6b47"]),
             (5, 8, ["bc1a", "ca85", "d37e"])]
CONSISTENCY = [(1, 1, []), (1, 8, ["96a2", "5f08", "6b47"]), (2, 5, ["5f08", "bc1a"]),
               (6, 8, ["0ebc", "ca85", "d37e"])]


@pytest.fixture(scope="module")
def vector_tree():
    return merkle.MemoryTree([merkle.leaf_hash(x) for x in LEAVES])


def test_roots_match_rfc6962_vectors(vector_tree):
    for size, root in enumerate(ROOTS):
        assert vector_tree.root(size).hex() == root
        assert merkle.root_from_leaf_hashes(vector_tree.levels[0][:size]).hex() == root


@pytest.mark.parametrize("index,size,want", INCLUSION)
def test_inclusion_proofs_match_vectors(vector_tree, index, size, want):
    proof = vector_tree.inclusion_proof(index, size)
    assert [h.hex() for h in proof] == [H[w] for w in want]
    leaf = merkle.leaf_hash(LEAVES[index])
    assert merkle.verify_inclusion(leaf, index, size, proof, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize("first,second,want", CONSISTENCY)
def test_consistency_proofs_match_vectors(vector_tree, first, second, want):
    proof = vector_tree.consistency_proof(first, second)
    assert [h.hex() for h in proof] == [H[w] for w in want]
    assert merkle.verify_consistency(first, second, bytes.fromhex(ROOTS[first]),
                                     bytes.fromhex(ROOTS[second]), proof)


def test_every_proof_of_the_vector_tree_verifies_and_rejects_tampering(vector_tree):
    for size in range(1, 9):
        root = vector_tree.root(size)
        for i in range(size):
            leaf = vector_tree.levels[0][i]
            proof = vector_tree.inclusion_proof(i, size)
            assert merkle.verify_inclusion(leaf, i, size, proof, root)
            assert not merkle.verify_inclusion(merkle.leaf_hash(b"x"), i, size, proof, root)
            if proof:
                bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1])] + proof[1:]
                assert not merkle.verify_inclusion(leaf, i, size, bad, root)
                assert not merkle.verify_inclusion(leaf, i, size, proof[:-1], root)
        for first in range(0, size + 1):
            proof = vector_tree.consistency_proof(first, size)
            assert merkle.verify_consistency(first, size, vector_tree.root(first), root, proof)
            if 0 < first < size:
                assert not merkle.verify_consistency(first, size, vector_tree.root(first),
                                                     merkle.leaf_hash(b"other"), proof)
                bad = [proof[-1][:-1] + bytes([proof[-1][-1] ^ 1])] + proof[:-1]
                assert not merkle.verify_consistency(first, size, vector_tree.root(first), root,
                                                     bad[::-1] if len(bad) > 1 else bad)
    assert not merkle.verify_inclusion(merkle.leaf_hash(b""), 8, 8, [], vector_tree.root(8))


@pytest.fixture(scope="module")
def oracle():
    """pymerkle and our tree over the same 100,000 random entries."""
    rng = random.Random(9162)
    entries = [rng.randbytes(rng.randint(0, 40)) for _ in range(100_000)]
    theirs = InmemoryTree(algorithm="sha256")
    for e in entries:
        theirs.append_entry(e)
    ours = merkle.MemoryTree([merkle.leaf_hash(e) for e in entries])
    return entries, theirs, ours


def test_against_pymerkle_on_random_sizes_up_to_100000(oracle):
    entries, theirs, ours = oracle
    rng = random.Random(6962)
    sizes = sorted({1, 2, 3, 1024, 65536, 65537, 99_999, 100_000} |
                   {rng.randint(1, 100_000) for _ in range(40)})
    for size in sizes:
        root = theirs.get_root(size)
        assert ours.root(size) == root, size
        for index in {0, size - 1, rng.randrange(size)}:
            proof = ours.inclusion_proof(index, size)
            assert merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, size, proof, root)
        first = rng.randint(1, size)
        assert merkle.verify_consistency(first, size, theirs.get_root(first), root,
                                         ours.consistency_proof(first, size))
    assert merkle.root_from_leaf_hashes(ours.levels[0]) == theirs.get_root(100_000)


def test_perfect_pieces_cover_ranges_exactly():
    for lo, hi in [(0, 1), (0, 7), (4, 7), (8, 13), (0, 1_000_000), (524288, 1_000_000)]:
        pieces = merkle.perfect_pieces(lo, hi)
        assert sum(1 << lv for lv, _ in pieces) == hi - lo
        assert pieces[0][1] << pieces[0][0] == lo
