/// The drain on SIGTERM/SIGINT: `go_away`, a wait, then 1001.
import ServiceLifecycle

/// Graceful shutdown (SIGTERM/SIGINT): `go_away` to every link, a drain, then 1001. Run it in
/// the same service group as the application, after it, so it is shut down first.
public struct ShutdownService: Service {
    let switchboard: Switchboard
    let drain: Duration

    public func run() async throws {
        try? await gracefulShutdown()
        SystemdNotification.send("STOPPING=1\nSTATUS=draining")
        await switchboard.shutdown(drain: drain)
    }
}
