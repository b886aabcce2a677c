/// The app-token public keys kept in files: read at start, and again on SIGHUP.
import DeviceAuth
import Foundation

/// Where the app-token public keys are kept: PEM files (`RELAY_JWT_PUBLIC_KEY_FILE`, `path` or
/// `kid=path,...`) and a JWK Set file (`RELAY_JWT_JWKS_FILE`). Read once as the configuration
/// is, and again on SIGHUP (a rotated key is used without a restart).
struct PublicKeyFiles: Sendable {
    var pemFiles: [(kid: String?, path: String)] = []
    var jwksFile: String?

    var isEmpty: Bool { pemFiles.isEmpty && jwksFile == nil }

    /// Every key the files hold, and one problem per file that cannot be used.
    func read() -> (keys: [AppTokenVerifier.PublicKey], problems: [String]) {
        var keys: [AppTokenVerifier.PublicKey] = []
        var problems: [String] = []
        for (kid, path) in pemFiles {
            guard let pem = try? String(contentsOfFile: path, encoding: .utf8) else {
                problems.append("RELAY_JWT_PUBLIC_KEY_FILE: cannot read '\(path)'")
                continue
            }
            guard let key = AppTokenVerifier.PublicKey(id: kid, pem: pem) else {
                problems.append("RELAY_JWT_PUBLIC_KEY_FILE: '\(path)' is not a PEM RSA or EC public key")
                continue
            }
            keys.append(key)
        }
        if let path = jwksFile {
            if let data = FileManager.default.contents(atPath: path) {
                do {
                    let (found, _) = try JSONWebKeySet.publicKeys(data)
                    if found.isEmpty { problems.append("RELAY_JWT_JWKS_FILE: '\(path)' has no RSA or EC signing key") }
                    keys += found
                } catch {
                    problems.append("RELAY_JWT_JWKS_FILE: '\(path)' is \(error)")
                }
            } else {
                problems.append("RELAY_JWT_JWKS_FILE: cannot read '\(path)'")
            }
        }
        return (keys, problems)
    }
}
