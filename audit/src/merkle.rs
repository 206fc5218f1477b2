//! The RFC 6962 Merkle tree hash of the log's entries (section 2.1): leaves hashed as
//! SHA-256(0x00 || entry), interior nodes as SHA-256(0x01 || left || right), the tree split at
//! the largest power of two below its size. Built incrementally in O(log n) memory.

use sha2::{Digest, Sha256};

/// The leaf hash of one entry (its line, without the newline).
pub fn leaf(entry: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Leaves pushed one at a time; [`Tree::root`] at any size.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    /// Roots of complete subtrees, largest first, with their sizes (powers of two).
    stack: Vec<([u8; 32], u64)>,
    size: u64,
}

impl Tree {
    /// Adds one leaf hash.
    pub fn push(&mut self, leaf: [u8; 32]) {
        let mut current = (leaf, 1u64);
        while let Some(&(top, size)) = self.stack.last() {
            if size != current.1 {
                break;
            }
            self.stack.pop();
            current = (node(&top, &current.0), size * 2);
        }
        self.stack.push(current);
        self.size += 1;
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the complete subtrees so far, as `size:hexhash` joined by `;`: enough to
    /// go on from here without the leaves (a segment of the log starts with it).
    pub fn frontier(&self) -> String {
        self.stack
            .iter()
            .map(|(hash, size)| {
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                format!("{size}:{hex}")
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The tree of `size` leaves whose [`Tree::frontier`] is `text`; `None` when the text is not
    /// one, or does not add up to `size`.
    pub fn from_frontier(text: &str, size: u64) -> Option<Tree> {
        let mut stack = Vec::new();
        for part in text.split(';').filter(|p| !p.is_empty()) {
            let (n, hex) = part.split_once(':')?;
            let n: u64 = n.parse().ok()?;
            if hex.len() != 64 || !n.is_power_of_two() {
                return None;
            }
            let mut hash = [0u8; 32];
            for (i, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            stack.push((hash, n));
        }
        let total: u64 = stack.iter().map(|(_, n)| n).sum();
        let decreasing = stack.windows(2).all(|w| w[0].1 > w[1].1);
        (total == size && decreasing).then_some(Tree { stack, size })
    }

    /// The tree hash of the leaves so far (SHA-256 of nothing for an empty tree).
    pub fn root(&self) -> [u8; 32] {
        let mut iter = self.stack.iter().rev();
        let Some(&(mut acc, _)) = iter.next() else {
            return Sha256::digest([]).into();
        };
        for (hash, _) in iter {
            acc = node(hash, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition of RFC 6962, section 2.1, recursively.
    fn reference(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                let k = n.next_power_of_two() / 2;
                let k = if k == n { n / 2 } else { k };
                node(&reference(&leaves[..k]), &reference(&leaves[k..]))
            }
        }
    }

    #[test]
    fn the_incremental_root_is_rfc_6962s_at_every_size() {
        let leaves: Vec<[u8; 32]> = (0..40u32).map(|i| leaf(&i.to_be_bytes())).collect();
        let mut tree = Tree::default();
        assert_eq!(tree.root(), reference(&[]));
        for (i, l) in leaves.iter().enumerate() {
            tree.push(*l);
            assert_eq!(tree.root(), reference(&leaves[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn a_tree_goes_on_from_its_frontier() {
        let leaves: Vec<[u8; 32]> = (0..23u32).map(|i| leaf(&i.to_be_bytes())).collect();
        let mut whole = Tree::default();
        for l in &leaves[..13] {
            whole.push(*l);
        }
        let mut resumed = Tree::from_frontier(&whole.frontier(), 13).expect("frontier");
        for l in &leaves[13..] {
            whole.push(*l);
            resumed.push(*l);
        }
        assert_eq!(resumed.root(), whole.root());
        assert_eq!(resumed.root(), reference(&leaves));
        assert!(
            Tree::from_frontier(&whole.frontier(), 22).is_none(),
            "wrong size"
        );
        assert!(Tree::from_frontier("3:00", 3).is_none());
    }

    #[test]
    fn an_empty_tree_is_the_hash_of_nothing() {
        // RFC 6962: MTH({}) = SHA-256().
        let expected = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let root: String = Tree::default()
            .root()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(root, expected);
    }
}
