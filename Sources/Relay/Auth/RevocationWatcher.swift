/// Notices devices revoked by another process (the command line) and disconnects them.
import Logging
import Registry
import ServiceLifecycle

/// Picks up devices revoked in the store by another process (`relay device revoke` while the
/// relay runs) and disconnects them, as a revocation through the admin API does at once.
struct RevocationWatcher: Service {
    let store: any RelayRegistry
    let switchboard: Switchboard
    let interval: Duration
    let logger: Logger

    func run() async throws {
        var since = (try? await store.latestRevocation()) ?? 0
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            guard !Task.isShuttingDownGracefully else { return }
            do {
                for revocation in try await store.revocations(after: since) {
                    switchboard.revoke(deviceID: revocation.deviceID)
                    since = max(since, revocation.at)
                }
            } catch {
                logger.warning("Reading revocations from the store failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
