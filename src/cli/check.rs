//! `kshift check --config FILE`: once the configuration has loaded and validated, prints
//! what kshift would serve: the listener, the clusters, and the routes and group rules in
//! the order they are matched.

use kshift::config::Config;

/// Prints the clusters, routes and group rules of a valid `config`.
pub fn print_routing(config: &Config) {
    println!(
        "config OK: listen {}, {} cluster(s)",
        config.proxy.listen,
        config.clusters.len()
    );
    for (name, cluster) in &config.clusters {
        println!("  cluster {name}: {}", cluster.bootstrap.join(", "));
    }
    println!("routes (first match wins):");
    for (i, route) in config.routes.iter().enumerate() {
        let mirror = if route.mirror.is_empty() {
            String::new()
        } else {
            format!(
                " mirror={:?} ({:?}, {}%)",
                route.mirror, route.mirror_mode, route.mirror_percent
            )
        };
        println!(
            "  [{i}] topics={:?} clients={:?} write={}{} read={} partitioning={:?}",
            route.topics,
            route.clients,
            route.write,
            mirror,
            route.read.as_deref().unwrap_or(&route.write),
            route.partitioning
        );
    }
    println!("groups (first match wins; unmatched groups use the first route's read cluster):");
    for (i, group) in config.groups.iter().enumerate() {
        println!(
            "  [{i}] groups={:?} cluster={}",
            group.groups, group.cluster
        );
    }
}
