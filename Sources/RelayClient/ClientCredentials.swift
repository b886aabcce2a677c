/// What a client presents: a device's signed query, a JWT's expiry, URLs and their encoding.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import RelayCore

extension RelayClient {
    /// Contract §1.2: `device_id`, `ts`, a fresh nonce and `sig` = hex(HMAC-SHA256(secret, id\nts\nnonce)).
    static func signedQuery(deviceID: String, secret: String, now: Int = Int(Date().timeIntervalSince1970)) -> String {
        let nonce = randomHex(bytes: 16)
        let signature = DeviceKey.hmacSHA256Hex(key: secret, message: "\(deviceID)\n\(now)\n\(nonce)")
        return "device_id=\(percentEncoded(deviceID))&ts=\(now)&nonce=\(nonce)&sig=\(signature)"
    }

    /// The `exp` of a JWT (unverified: only to know when to refresh it).
    static func expiry(of token: String) -> Double? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var base64 = String(parts[1]).replacing("-", with: "+").replacing("_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.utf8.count % 4) % 4)
        guard let data = Data(base64Encoded: base64), let claims = try? JSONParser.object(String(decoding: data, as: UTF8.self)),
            case .number(let exp)? = claims["exp"]
        else { return nil }
        return exp
    }

    static func randomHex(bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdef")
        return String((0..<bytes * 2).map { _ in digits[Int(generator.next() % 16)] })
    }

    static func percentEncoded(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }
}

/// The relay's URL could not be read as `ws(s)://` or `http(s)://` host[:port][/prefix].
public struct InvalidRelayURL: Error, Sendable {
    public var url: String
}

extension EndpointURL {
    /// `other`'s host and scheme with `base`'s path (a `reconnect_url` naming only another node).
    init(replacingHostOf base: EndpointURL, with other: EndpointURL) {
        self = other
        self.target = base.target
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
