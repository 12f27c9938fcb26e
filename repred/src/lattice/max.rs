use serde::{Deserialize, Serialize};

use crate::Reduce;

/// A register that keeps the largest value ever written.
///
/// The state is its own update: write `Max::new(v)`.
///
/// ```
/// use repred::{Max, Reduce};
///
/// let mut seen = Max::default();
/// assert_eq!(seen.reduce(Max::new(3)), Some(Max::new(3)));
/// assert_eq!(seen.reduce(Max::new(2)), None, "smaller changes nothing");
/// assert_eq!(seen.get(), Some(&3));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Max<T>(Option<T>);

impl<T> Default for Max<T> {
    fn default() -> Self {
        Max(None)
    }
}

/// A register holding the value: `Max::from(3)` is `Max::new(3)`, and a
/// derived change takes a bare value (`PlayerChange::best(42)`).
impl<T> From<T> for Max<T> {
    fn from(value: T) -> Self {
        Max(Some(value))
    }
}

impl<T> Max<T> {
    /// A register holding `value`; as an update, a write of it (the same
    /// as [`set`](Max::set)).
    pub fn new(value: T) -> Self {
        Max(Some(value))
    }

    /// An update writing `value`: it changes the register if it is the
    /// largest written yet.
    pub fn set(value: T) -> Self {
        Max(Some(value))
    }

    /// The largest value written, if any.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: Ord + Clone + Serialize + serde::de::DeserializeOwned> Reduce for Max<T> {
    type Update = Max<T>;

    fn reduce(&mut self, update: Max<T>) -> Option<Max<T>> {
        // None sorts below every Some: the empty register is the bottom.
        (update.0 > self.0).then(|| {
            self.0.clone_from(&update.0);
            update
        })
    }

    fn snapshot(&self) -> Max<T> {
        self.clone()
    }
}

/// A register that keeps the smallest value ever written.
///
/// ```
/// use repred::{Min, Reduce};
///
/// let mut deadline = Min::default();
/// deadline.reduce(Min::new(10));
/// assert_eq!(deadline.reduce(Min::new(7)), Some(Min::new(7)));
/// assert_eq!(deadline.reduce(Min::new(9)), None);
/// assert_eq!(deadline.get(), Some(&7));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Min<T>(Option<T>);

impl<T> Default for Min<T> {
    fn default() -> Self {
        Min(None)
    }
}

/// A register holding the value: `Min::from(3)` is `Min::new(3)`, and a
/// derived change takes a bare value (`PlayerChange::best(42)`).
impl<T> From<T> for Min<T> {
    fn from(value: T) -> Self {
        Min(Some(value))
    }
}

impl<T> Min<T> {
    /// A register holding `value`; as an update, a write of it (the same
    /// as [`set`](Min::set)).
    pub fn new(value: T) -> Self {
        Min(Some(value))
    }

    /// An update writing `value`: it changes the register if it is the
    /// smallest written yet.
    pub fn set(value: T) -> Self {
        Min(Some(value))
    }

    /// The smallest value written, if any.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: Ord + Clone + Serialize + serde::de::DeserializeOwned> Reduce for Min<T> {
    type Update = Min<T>;

    fn reduce(&mut self, update: Min<T>) -> Option<Min<T>> {
        let smaller = match (&update.0, &self.0) {
            (Some(new), Some(old)) => new < old,
            (Some(_), None) => true,
            (None, _) => false,
        };
        smaller.then(|| {
            self.0.clone_from(&update.0);
            update
        })
    }

    fn snapshot(&self) -> Min<T> {
        self.clone()
    }
}
