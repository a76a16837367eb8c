//! Window aggregates: count, sum, min, max, average, exact distinct count and top-N. Each
//! accumulates values one at a time and merges with another of its kind (session windows
//! merge; partial aggregates combine), and reports a result without consuming itself.

use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::operators::state::{StateMap, StateSet};

pub trait Aggregate: Default {
    type Input: ?Sized;
    type Output;
    fn add(&mut self, value: &Self::Input);
    fn merge(&mut self, other: Self);
    fn result(&self) -> Self::Output;
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count(pub u64);

impl Aggregate for Count {
    type Input = ();
    type Output = u64;
    fn add(&mut self, _: &()) {
        self.0 += 1;
    }
    fn merge(&mut self, other: Count) {
        self.0 += other.0;
    }
    fn result(&self) -> u64 {
        self.0
    }
}

/// A sum that saturates at the largest finite values instead of overflowing to infinity:
/// state is checkpointed as JSON, which has no infinity, and a sum that could not be
/// restored would stop the job.
fn finite_sum(a: f64, b: f64) -> f64 {
    let sum = a + b;
    if sum.is_finite() {
        sum
    } else if sum.is_nan() {
        a
    } else {
        sum.signum() * f64::MAX
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sum(pub f64);

impl Aggregate for Sum {
    type Input = f64;
    type Output = f64;
    fn add(&mut self, value: &f64) {
        self.0 = finite_sum(self.0, *value);
    }
    fn merge(&mut self, other: Sum) {
        self.0 = finite_sum(self.0, other.0);
    }
    fn result(&self) -> f64 {
        self.0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Min(pub Option<f64>);

impl Aggregate for Min {
    type Input = f64;
    type Output = Option<f64>;
    fn add(&mut self, value: &f64) {
        self.0 = Some(self.0.map_or(*value, |m| m.min(*value)));
    }
    fn merge(&mut self, other: Min) {
        if let Some(v) = other.0 {
            self.add(&v);
        }
    }
    fn result(&self) -> Option<f64> {
        self.0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Max(pub Option<f64>);

impl Aggregate for Max {
    type Input = f64;
    type Output = Option<f64>;
    fn add(&mut self, value: &f64) {
        self.0 = Some(self.0.map_or(*value, |m| m.max(*value)));
    }
    fn merge(&mut self, other: Max) {
        if let Some(v) = other.0 {
            self.add(&v);
        }
    }
    fn result(&self) -> Option<f64> {
        self.0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Average {
    sum: f64,
    count: u64,
}

impl Aggregate for Average {
    type Input = f64;
    type Output = Option<f64>;
    fn add(&mut self, value: &f64) {
        self.sum = finite_sum(self.sum, *value);
        self.count += 1;
    }
    fn merge(&mut self, other: Average) {
        self.sum = finite_sum(self.sum, other.sum);
        self.count += other.count;
    }
    fn result(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// Exact: every distinct value is kept (the state per key grows with the distinct values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistinctCount<T: Hash + Eq>(StateSet<T>);

impl<T: Hash + Eq> Default for DistinctCount<T> {
    fn default() -> Self {
        DistinctCount(StateSet::default())
    }
}

impl<T: Hash + Eq> DistinctCount<T> {
    /// The distinct values (for a checkpoint).
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    pub fn from_values(values: impl IntoIterator<Item = T>) -> DistinctCount<T> {
        DistinctCount(values.into_iter().collect())
    }
}

impl<T: Hash + Eq + Clone> Aggregate for DistinctCount<T> {
    type Input = T;
    type Output = u64;
    fn add(&mut self, value: &T) {
        if !self.0.contains(value) {
            self.0.insert(value.clone());
        }
    }
    fn merge(&mut self, other: DistinctCount<T>) {
        self.0.extend(other.0);
    }
    fn result(&self) -> u64 {
        self.0.len() as u64
    }
}

/// The `n` most frequent values with their counts, most frequent first, ties broken by
/// value (ascending), so the result is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopN<T: Hash + Eq, const N: usize>(StateMap<T, u64>);

impl<T: Hash + Eq, const N: usize> Default for TopN<T, N> {
    fn default() -> Self {
        TopN(StateMap::default())
    }
}

impl<T: Hash + Eq + Ord + Clone, const N: usize> TopN<T, N> {
    /// Counts `value` `n` times at once (ranking already-counted values).
    pub fn add_n(&mut self, value: &T, n: u64) {
        match self.0.get_mut(value) {
            Some(count) => *count += n,
            None => {
                self.0.insert(value.clone(), n);
            }
        }
    }
}

impl<T: Hash + Eq + Ord + Clone, const N: usize> Aggregate for TopN<T, N> {
    type Input = T;
    type Output = Vec<(T, u64)>;
    fn add(&mut self, value: &T) {
        self.add_n(value, 1);
    }
    fn merge(&mut self, other: TopN<T, N>) {
        for (value, count) in other.0 {
            *self.0.entry(value).or_default() += count;
        }
    }
    fn result(&self) -> Vec<(T, u64)> {
        let mut all: Vec<(&T, &u64)> = self.0.iter().collect();
        all.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        all.into_iter().take(N).map(|(v, c)| (v.clone(), *c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_aggregates_add_and_merge() {
        let (mut sum, mut min, mut max, mut avg) = (Sum::default(), Min::default(), Max::default(), Average::default());
        for v in [3.0, -1.0, 4.0] {
            sum.add(&v);
            min.add(&v);
            max.add(&v);
            avg.add(&v);
        }
        let mut other = Average::default();
        other.add(&10.0);
        avg.merge(other);
        assert_eq!((sum.result(), min.result(), max.result()), (6.0, Some(-1.0), Some(4.0)));
        assert_eq!(avg.result(), Some(4.0));
        let mut huge = Sum::default();
        huge.add(&1e308);
        huge.add(&1e308);
        assert_eq!(huge.result(), f64::MAX, "saturates: JSON has no infinity to checkpoint");
        assert_eq!(Average::default().result(), None);
        let mut count = Count::default();
        count.add(&());
        count.merge(Count(2));
        assert_eq!(count.result(), 3);
    }

    #[test]
    fn distinct_counts_are_exact_and_top_n_breaks_ties_by_value() {
        let mut users: DistinctCount<String> = DistinctCount::default();
        for u in ["u1", "u2", "u1"] {
            users.add(&u.to_string());
        }
        assert_eq!(users.result(), 2);
        let mut pages: TopN<&str, 2> = TopN::default();
        for p in ["/b", "/a", "/c", "/c", "/b"] {
            pages.add(&p);
        }
        assert_eq!(pages.result(), vec![("/b", 2), ("/c", 2)]);
        let mut more: TopN<&str, 2> = TopN::default();
        more.add(&"/a");
        more.add(&"/a");
        pages.merge(more);
        assert_eq!(pages.result(), vec![("/a", 3), ("/b", 2)]);
    }
}
