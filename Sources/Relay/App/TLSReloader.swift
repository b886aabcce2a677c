/// SIGHUP reads the TLS certificate and key again.
import Logging
import RelayWebSocket
import ServiceLifecycle
import UnixSignals

/// On SIGHUP, reads the TLS certificate and key files again (a renewed certificate is served
/// to new connections without a restart); a pair that cannot be used is logged and the
/// current one stays.
struct TLSReloader: Service {
    let tls: ServerTLS
    let logger: Logger

    func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        try await cancelWhenGracefulShutdown {
            for await _ in hangups {
                do {
                    try tls.reload()
                    logger.notice("Reloaded the TLS certificate and key", metadata: ["tls.certificate": "\(tls.certificatePath)"])
                } catch {
                    logger.error("Could not reload the TLS certificate and key; still serving the previous pair", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}
