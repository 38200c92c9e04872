//! Metrics, computed from plain numbers (no tensors) so they can be checked by hand.

pub mod classification;
