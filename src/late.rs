//! A service that exists only once startup reaches it (ADR 0044).
//!
//! The HTTP listeners serve before the Docker engine answers (it may come up after us), but the
//! A2A proxy and the image service need it. `host` makes a [`pair`] for each such service: the
//! routes get the reading half and answer 503 until the service is there; `host` alone keeps the
//! writing half and fills it once, when it has built the service. Nobody else can write it.

use std::sync::{Arc, OnceLock};

/// The reading half: `None` until the service exists.
pub struct Late<T>(Arc<OnceLock<Arc<T>>>);

/// The writing half, consumed by the one [`Fill::fill`].
pub struct Fill<T>(Arc<OnceLock<Arc<T>>>);

/// An empty service and the one handle that fills it.
pub fn pair<T>() -> (Fill<T>, Late<T>) {
    let cell = Arc::new(OnceLock::new());
    (Fill(cell.clone()), Late(cell))
}

impl<T> Late<T> {
    /// The service, once it exists.
    pub fn get(&self) -> Option<Arc<T>> {
        self.0.get().cloned()
    }

    /// A service that never comes (its routes always answer 503).
    pub fn never() -> Self {
        Late(Arc::default())
    }
}

impl<T> Clone for Late<T> {
    fn clone(&self) -> Self {
        Late(self.0.clone())
    }
}

impl<T> Fill<T> {
    /// Hands the service to every reader.
    pub fn fill(self, value: Arc<T>) {
        let _ = self.0.set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_the_one_fill() {
        let (fill, late) = pair::<u32>();
        let reader = late.clone();
        assert!(reader.get().is_none());
        fill.fill(Arc::new(7));
        assert_eq!(reader.get().as_deref(), Some(&7));
        assert_eq!(late.get().as_deref(), Some(&7));
        assert!(Late::<u32>::never().get().is_none());
    }
}
