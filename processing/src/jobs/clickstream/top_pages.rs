//! The top-pages ranking: the 10 most viewed pages of each closed minute, ranked over a
//! round's 1-minute page counts from every key group (all groups close a minute in the same
//! round, at the job's watermark), ties by page name.

use std::collections::BTreeMap;

use crate::jobs::clickstream::output::Output;
use crate::operators::aggregate_functions::{Aggregate, TopN};

pub const TOP_PAGES: usize = 10;

/// Puts one round's results in their written order (per output by event time, then name)
/// and ranks each closed minute's pages into its top-pages result.
pub(crate) fn assemble(mut results: Vec<Output>) -> Vec<Output> {
    let mut rankings: BTreeMap<(i64, i64), TopN<String, TOP_PAGES>> = BTreeMap::new();
    for result in &results {
        if let Output::PageViews1m { page, window_start, window_end, views, .. } = result {
            rankings.entry((*window_start, *window_end)).or_default().add_n(page, *views);
        }
    }
    results.extend(rankings.into_iter().map(|((window_start, window_end), ranking)| Output::TopPages1m {
        window_start,
        window_end,
        top: ranking.result(),
    }));
    results.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    results
}
