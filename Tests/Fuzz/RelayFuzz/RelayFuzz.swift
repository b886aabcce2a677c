import CFuzzMain
import DeviceAuth
import Foundation
import OpenSSLCrypto
@testable import Relay
import RelayCore

// libFuzzer entry: the first byte picks the parser (a message, a token, a device query, or a
// token's claims signed with the fuzz secret), the rest is its input. Build and run with
//   swift build -c debug --sanitize=fuzzer --product relay-fuzz --scratch-path .build-fuzz
//   .build-fuzz/debug/relay-fuzz -max_total_time=120 Tests/Fuzz/corpus
// A crash, a hang or a leak-sanitizer report is a finding; refusals are not.

private let fuzzSecret = Array("fuzz-secret-fuzz-secret-fuzz-secr".utf8)
private let verifier = AppTokenVerifier(configuration: .init(algorithms: [.hs256, .rs256], secretKeys: [.init(secret: fuzzSecret)]))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    guard let selector = bytes.first else { return 0 }
    let text = String(decoding: bytes.dropFirst(), as: UTF8.self)
    switch selector % 4 {
    case 0:
        // The WebSocket message decoder.
        if let envelope = try? ClientEnvelope(text: text), case .negotiation(let type, _, let fields) = envelope.message {
            _ = OutboundMessage(type, fields: fields).text(seq: 1)
        }
    case 1:
        // App tokens (header, claims, libjwt or OpenSSL by typ).
        _ = try? verifier.verify(text, now: 1_800_000_000)
    case 3:
        // Token claims, validly signed, as a JWT (libjwt) or an OAuth access token (OpenSSL) as
        // the selector's next bit says: the claim checks, then the expiry rules every transport
        // applies (the link's expiry and the socket's watch delay).
        let type = (selector / 4) % 2 == 0 ? "JWT" : "at+jwt"
        let header = Base64URL.encode(Array(#"{"alg":"HS256","typ":"\#(type)"}"#.utf8))
        let claims = Base64URL.encode(Array(text.utf8))
        let mac = LibCrypto.hmacSHA256(key: fuzzSecret, message: Array("\(header).\(claims)".utf8))
        if let identity = try? verifier.verify("\(header).\(claims).\(Base64URL.encode(mac))", now: 1_800_000_000) {
            let validUntil = identity.expiresAt + 30
            let link = LinkStateMachine<ContinuousClock.Instant>(
                outbox: OutboxBuffer(maxMessages: 1, maxBytes: 1),
                rate: TokenBucket(burst: 1, perSecond: 1),
                resumeGrace: .zero,
                tokenValidUntil: validUntil
            )
            _ = link.tokenHasExpired(at: 1_800_000_000)
            _ = LinkSocket.expiryCheckDelay(validUntil: validUntil, now: 1_800_000_000)
        }
    default:
        // Device signature query parameters.
        var parameters: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            parameters[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        _ = try? DeviceSignature { parameters[$0] }
    }
    return 0
}
