/// SIGHUP reloads what can be reloaded (the TLS pair, the app-token key files, the JWK Set) and never stops the relay.
import DeviceAuth
import Logging
import RelayWebSocket
import ServiceLifecycle
import UnixSignals

/// SIGHUP is what logrotate's `postrotate`, a closed terminal and many supervisors send: it
/// never stops the relay (`relay serve` ignores it from its first step; this service traps it).
/// Each one reloads what can be reloaded, logs one line saying what, and does nothing else: the
/// TLS certificate and key (a renewed certificate is served to new connections), the app-token
/// public key files, the JWK Set from its URL. What cannot be read keeps its previous value.
struct HangupReloader: Service {
    let tls: ServerTLS?
    /// The key files, and the verifier's keys they replace.
    let keyFiles: (files: PublicKeyFiles, keys: KeyRing)?
    let jwks: JWKSSource?
    let logger: Logger

    func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        try await cancelWhenGracefulShutdown {
            for await _ in hangups { await reload() }
        }
    }

    func reload() async {
        var reloaded: [String] = []
        var kept: [String] = []
        if let tls {
            do {
                try tls.reload()
                reloaded.append("tls certificate \(tls.certificatePath)")
            } catch {
                kept.append("tls: \(error)")
            }
        }
        if let (files, keys) = keyFiles {
            let (found, problems) = files.read()
            if problems.isEmpty {
                keys.replace(with: found)
                reloaded.append("\(found.count) app-token key(s) from files")
            } else {
                kept += problems
            }
        }
        if let jwks {
            if await jwks.refresh() { reloaded.append("JWK Set \(jwks.url)") } else { kept.append("JWK Set \(jwks.url): fetch failed") }
        }
        let metadata: Logger.Metadata = ["reloaded": "\(reloaded.joined(separator: "; "))", "kept": "\(kept.joined(separator: "; "))"]
        if kept.isEmpty {
            logger.notice(reloaded.isEmpty ? "SIGHUP: nothing to reload" : "SIGHUP: reloaded \(reloaded.joined(separator: ", "))", metadata: metadata)
        } else {
            logger.error("SIGHUP: could not reload all; what failed keeps its previous value", metadata: metadata)
        }
    }
}
