//! Long Range Arena data: readers, generators, substitutes and batching (in progress).
