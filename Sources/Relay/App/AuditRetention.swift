/// `RELAY_AUDIT_RETENTION_DAYS`: the audit log keeps that many days of sessions.
import Foundation
import Logging
import Registry
import ServiceLifecycle

/// Deletes the audit entries of sessions created more than `days` ago: at start, then every
/// `interval`. In a fleet every node does it; the deletes agree (same cut-off, idempotent).
struct AuditRetention: Service {
    let store: any RelayRegistry
    let days: Int
    let interval: Duration
    let logger: Logger

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let cutoff = Date().addingTimeInterval(-Double(days) * 86_400)
            do {
                let deleted = try await store.pruneAudit(createdBefore: cutoff)
                if deleted > 0 {
                    logger.info("Pruned the audit log", metadata: ["audit.deleted": "\(deleted)", "audit.retention_days": "\(days)"])
                }
            } catch {
                logger.warning("Pruning the audit log failed", metadata: ["error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
        }
    }
}
