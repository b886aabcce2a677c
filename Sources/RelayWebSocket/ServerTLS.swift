/// TLS for `https://` and `wss://`: the certificate and key from files, read again on demand (SIGHUP).
import NIOCore
import NIOSSL
import Synchronization

/// The server's TLS context, from a PEM certificate chain and a PEM private key. `reload()`
/// reads both files again: new connections use the new pair, open ones keep theirs; a pair that
/// cannot be read leaves the current one in place.
public final class ServerTLS: Sendable {
    public let certificatePath: String
    public let keyPath: String
    private let context: Mutex<NIOSSLContext>

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    public init(certificatePath: String, keyPath: String) throws(Invalid) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        context = Mutex(try Self.load(certificatePath: certificatePath, keyPath: keyPath))
    }

    /// Reads the files again; throws (keeping the current pair) when they cannot be used.
    public func reload() throws(Invalid) {
        let fresh = try Self.load(certificatePath: certificatePath, keyPath: keyPath)
        context.withLock { $0 = fresh }
    }

    /// The handler a new connection starts with.
    func handler() -> NIOSSLServerHandler {
        NIOSSLServerHandler(context: context.withLock { $0 })
    }

    private static func load(certificatePath: String, keyPath: String) throws(Invalid) -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw Invalid(description: "cannot read a PEM certificate chain from \(certificatePath) (\(error))")
        }
        guard !chain.isEmpty else { throw Invalid(description: "\(certificatePath) holds no certificate") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw Invalid(description: "cannot read a PEM private key from \(keyPath) (\(error))")
        }
        do {
            let configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw Invalid(description: "the certificate in \(certificatePath) and the key in \(keyPath) cannot serve TLS (\(error))")
        }
    }
}
