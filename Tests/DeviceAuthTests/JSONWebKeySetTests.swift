/// Keys from a JSON Web Key Set: the test keys, as an identity provider would publish them.
@testable import DeviceAuth
import Foundation
import OpenSSLCrypto
import Testing

struct JSONWebKeySetTests {
    /// TestKeys.rsaPublic and TestKeys.ecPublic as JWKs (made from the PEMs by Python's cryptography).
    static var rsa: [String: Any] {
        [
        "kty": "RSA", "kid": "rsa-1", "use": "sig", "e": "AQAB",
        "n": "00q2ZyImOH2l5qAgBhCBgY_XDqDJSYKEha7jWv7x3mr6wdeNj7TMl66s2_Om8quPWo7oQebUIDbppK-pCutpA2t9y8hzFRCP24FqH8TW6nv6uiGCnv_jp_3R5zdy1m2KeSOnKbK-g8ADrrwl8H7GdQNHawgiAyDCMVFCvEZjrol3u-iKUv703qfcXscs6Lx0qd0J78908YHMoJKGrxsghBSLcF0ncSvR_PDrNm-6HELegjFyRsjF1JQaTzHGMZYlsLjqw6RDZ7WOjm60mMpIVN_gnwzJjU8eji373WEUMS0aW-veD29zYFAMGVmbts92CXIjIT0dahozqTEtPMdnHQ",
        ]
    }
    static var ec: [String: Any] {
        [
        "kty": "EC", "kid": "ec-1", "crv": "P-256",
        "x": "igK58h4OdG-LAxD4til5OT-MqZAYm1bwpEXRGFy_3Sg", "y": "dVQI-5GEn1WbxFjSGuIIQ_iDBc8dPI_kIqZ5hb7cy7k",
        ]
    }

    static func set(_ keys: [[String: Any]]) throws -> Data {
        try JSONSerialization.data(withJSONObject: ["keys": keys])
    }

    @Test func rsaAndECKeysBecomeTheSamePublicKeysAsTheirPEMs() throws {
        let (keys, skipped) = try JSONWebKeySet.publicKeys(try Self.set([Self.rsa, Self.ec]))
        #expect(skipped == 0 && keys.map(\.id) == ["rsa-1", "ec-1"] && keys.map(\.kind) == [.rsa, .ec])
        let normalized = { (pem: String) in pem.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.joined() }
        #expect(normalized(keys[0].pem) == normalized(TestKeys.rsaPublic))
        #expect(normalized(keys[1].pem) == normalized(TestKeys.ecPublic))
    }

    @Test func tokensSignedWithTheKeysVerifyThroughAKeyRingByKid() throws {
        let ring = KeyRing(try JSONWebKeySet.publicKeys(try Self.set([Self.rsa, Self.ec])).keys)
        let verifier = AppTokenVerifier(configuration: .init(algorithms: [.rs256, .es256]), keyRing: ring)
        let now = Date().timeIntervalSince1970
        let claims = #"{"sub":"alice","exp":\#(Int(now) + 600)}"#
        let rsaToken = try LibJWT.encode(algorithm: .rs256, key: Array(TestKeys.rsaPrivate.utf8), claimsJSON: claims, headers: ["kid": "rsa-1"])
        let ecToken = try LibJWT.encode(algorithm: .es256, key: Array(TestKeys.ecPrivate.utf8), claimsJSON: claims, headers: ["kid": "ec-1"])
        #expect(try verifier.verify(rsaToken, now: now).userID == "alice")
        #expect(try verifier.verify(ecToken, now: now).userID == "alice")
        // The provider rotates the RSA key out: its tokens no longer verify.
        ring.replace(with: try JSONWebKeySet.publicKeys(try Self.set([Self.ec])).keys)
        #expect(throws: AuthFailure.unknownKey) { try verifier.verify(rsaToken, now: now) }
    }

    @Test func keysThatAreNotSigningKeysOrNotKeysAtAllAreSkipped() throws {
        var encryption = Self.rsa
        encryption["use"] = "enc"
        var offCurve = Self.ec
        offCurve["y"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        let symmetric: [String: Any] = ["kty": "oct", "k": "c2VjcmV0"]
        let (keys, skipped) = try JSONWebKeySet.publicKeys(try Self.set([encryption, offCurve, symmetric, ["kty": "RSA"]]))
        #expect(keys.isEmpty && skipped == 4)
        #expect(throws: JSONWebKeySet.Invalid.self) { try JSONWebKeySet.publicKeys(Data("[]".utf8)) }
    }
}
