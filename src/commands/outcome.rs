//! What a finished job tells its user on stdout.

use apscore_coordinator::Finished;
use apscore_coordinator::summary::Summary;

/// What a finished job tells its user on stdout.
pub fn print_outcome(finished: &Finished) {
    if finished.already_complete {
        println!(
            "already complete: {} holds this job, finished; nothing was changed \
             (--overwrite runs it again)",
            finished.summary.facts.output
        );
    }
    print_summary(&finished.summary);
}

/// The counts, the model's throughput and where each output is.
pub fn print_summary(summary: &Summary) {
    let c = &summary.facts.counts;
    println!(
        "ranked {} of {} input rows ({} rejected); selected {} by {}",
        c.scored_rows,
        c.input_rows,
        c.rejected_rows,
        c.selected_rows,
        summary.facts.ranking.metric.name()
    );
    if let Some(s) = &summary.scoring {
        println!(
            "model: {} tokens ({:.1} % padding), {:.0} tokens/s, {:.2} pairs/s",
            s.tokens,
            100.0 * s.padding_waste,
            s.tokens_per_second,
            s.pairs_per_second
        );
    }
    println!("outputs in {}:", summary.facts.output);
    for (what, path) in &summary.outputs {
        println!("  {what:<14} {path}");
    }
    println!("  {:<14} summary.json", "summary");
    if c.rejected_rows > 0 {
        println!(
            "rejected rows and their reasons: {}/rejected_rows.parquet",
            summary.facts.output
        );
    }
}
