"""Compiled (numba) projection of 3D Gaussians and 2D surfels, forward and backward.

The forward passes follow :mod:`.projection` (itself gsplat 1.5.3's ``ProjectionEWA3DGSFused.cu`` and
``Projection2DGSFused.cu``) step for step; the backward passes are the hand-derived vector-Jacobian
products of those formulas, checked against PyTorch autograd of :mod:`.projection` in the tests. Gradients
flow to means, quats and scales (not to the cameras). One (camera, Gaussian) pair per iteration,
parallel over pairs; culled pairs get zero outputs and zero gradients.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels_tiles import ALPHA_THRESHOLD, FASTMATH

MAX_EXTENT_SIGMAS = 3.33  # gsplat's bounding-box half-size in standard deviations


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _rotmat(q, R):
    """Fill R [3, 3] from a wxyz quaternion; returns the normalised quaternion and the norm."""
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    inv = 1.0 / max(norm, 1e-12)  # F.normalize's eps
    w, x, y, z = q[0] * inv, q[1] * inv, q[2] * inv, q[3] * inv
    R[0, 0] = 1 - 2 * (y * y + z * z)
    R[0, 1] = 2 * (x * y - w * z)
    R[0, 2] = 2 * (x * z + w * y)
    R[1, 0] = 2 * (x * y + w * z)
    R[1, 1] = 1 - 2 * (x * x + z * z)
    R[1, 2] = 2 * (y * z - w * x)
    R[2, 0] = 2 * (x * z - w * y)
    R[2, 1] = 2 * (y * z + w * x)
    R[2, 2] = 1 - 2 * (x * x + y * y)
    return w, x, y, z, max(norm, 1e-12)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _quat_grad(G, w, x, y, z, norm, out):
    """dL/dq [4] from dL/dR = G [3, 3], through the normalisation q / |q|."""
    gw = 2 * (-z * G[0, 1] + y * G[0, 2] + z * G[1, 0] - x * G[1, 2] - y * G[2, 0] + x * G[2, 1])
    gx = 2 * (y * G[0, 1] + z * G[0, 2] + y * G[1, 0] - 2 * x * G[1, 1] - w * G[1, 2] + z * G[2, 0]
              + w * G[2, 1] - 2 * x * G[2, 2])
    gy = 2 * (-2 * y * G[0, 0] + x * G[0, 1] + w * G[0, 2] + x * G[1, 0] + z * G[1, 2] - w * G[2, 0]
              + z * G[2, 1] - 2 * y * G[2, 2])
    gz = 2 * (-2 * z * G[0, 0] - w * G[0, 1] + x * G[0, 2] + w * G[1, 0] - 2 * z * G[1, 1] + y * G[1, 2]
              + x * G[2, 0] + y * G[2, 1])
    dot = w * gw + x * gx + y * gy + z * gz
    out[0] += (gw - w * dot) / norm
    out[1] += (gx - x * dot) / norm
    out[2] += (gy - y * dot) / norm
    out[3] += (gz - z * dot) / norm


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _inside_image(mx, my, rx, ry, width, height):
    return mx + rx > 0 and mx - rx < width and my + ry > 0 and my - ry < height


# ----------------------------------------------------------------------------------------------------
# 3D Gaussians (EWA splatting)
# ----------------------------------------------------------------------------------------------------


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _camera_covariance(q, s, V, R, A, Sc):
    """Fill R = R(q), A = R_cw R S and Sc = A A^T; returns the normalised quaternion and its norm."""
    w, x, y, z, norm = _rotmat(q, R)
    for i in range(3):
        for j in range(3):
            A[i, j] = (V[i, 0] * R[0, j] + V[i, 1] * R[1, j] + V[i, 2] * R[2, j]) * s[j]
    for i in range(3):
        for j in range(3):
            Sc[i, j] = A[i, 0] * A[j, 0] + A[i, 1] * A[j, 1] + A[i, 2] * A[j, 2]
    return w, x, y, z, norm


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _fov_limits(K, width, height):
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    return lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def project_3dgs_fwd(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near, far,
                     radius_clip):
    """means2d [C, N, 2], conics [C, N, 3], depths [C, N], radii [C, N, 2] int32 (0 where culled)."""
    C, N = viewmats.shape[0], means.shape[0]
    means2d = np.zeros((C, N, 2))
    conics = np.zeros((C, N, 3))
    depths = np.zeros((C, N))
    radii = np.zeros((C, N, 2), dtype=np.int32)
    for k in prange(C * N):
        c, n = k // N, k % N
        V, K = viewmats[c], Ks[c]
        x = V[0, 0] * means[n, 0] + V[0, 1] * means[n, 1] + V[0, 2] * means[n, 2] + V[0, 3]
        y = V[1, 0] * means[n, 0] + V[1, 1] * means[n, 1] + V[1, 2] * means[n, 2] + V[1, 3]
        z = V[2, 0] * means[n, 0] + V[2, 1] * means[n, 1] + V[2, 2] * means[n, 2] + V[2, 3]
        if not (z >= near and z <= far):
            continue
        o = opacities[n]
        if not (o >= ALPHA_THRESHOLD):
            continue
        R = np.empty((3, 3))
        A = np.empty((3, 3))
        Sc = np.empty((3, 3))
        _camera_covariance(quats[n], scales[n], V, R, A, Sc)
        fx, fy = K[0, 0], K[1, 1]
        lxp, lxn, lyp, lyn = _fov_limits(K, width, height)
        tx = z * min(max(x / z, -lxn), lxp)
        ty = z * min(max(y / z, -lyn), lyp)
        # J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]];  cov2d = J Sc J^T
        j00, j02 = fx / z, -fx * tx / (z * z)
        j11, j12 = fy / z, -fy * ty / (z * z)
        a = j00 * j00 * Sc[0, 0] + 2 * j00 * j02 * Sc[0, 2] + j02 * j02 * Sc[2, 2] + eps2d
        b = j00 * (j11 * Sc[0, 1] + j12 * Sc[0, 2]) + j02 * (j11 * Sc[2, 1] + j12 * Sc[2, 2])
        cc = j11 * j11 * Sc[1, 1] + 2 * j11 * j12 * Sc[1, 2] + j12 * j12 * Sc[2, 2] + eps2d
        det = a * cc - b * b
        if not (det > 0):
            continue
        extend = min(math.sqrt(2.0 * math.log(max(o, ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), MAX_EXTENT_SIGMAS)
        rx = math.ceil(extend * math.sqrt(max(a, 0.0)))
        ry = math.ceil(extend * math.sqrt(max(cc, 0.0)))
        if not (rx > radius_clip or ry > radius_clip):
            continue
        mx = fx * x / z + K[0, 2]
        my = fy * y / z + K[1, 2]
        if not _inside_image(mx, my, rx, ry, width, height):
            continue
        means2d[c, n, 0], means2d[c, n, 1] = mx, my
        conics[c, n, 0], conics[c, n, 1], conics[c, n, 2] = cc / det, -b / det, a / det
        depths[c, n] = z
        radii[c, n, 0], radii[c, n, 1] = int(rx), int(ry)
    return means2d, conics, depths, radii


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def project_3dgs_bwd(means, quats, scales, viewmats, Ks, width, height, eps2d, radii, conics,
                     v_means2d, v_conics, v_depths):
    """dL/dmeans [N, 3], dL/dquats [N, 4], dL/dscales [N, 3] (summed over cameras)."""
    C, N = viewmats.shape[0], means.shape[0]
    v_means = np.zeros((N, 3))
    v_quats = np.zeros((N, 4))
    v_scales = np.zeros((N, 3))
    for n in prange(N):
        R = np.empty((3, 3))
        A = np.empty((3, 3))
        Sc = np.empty((3, 3))
        G = np.empty((3, 3))
        dA = np.empty((3, 3))
        for c in range(C):
            if radii[c, n, 0] <= 0 or radii[c, n, 1] <= 0:
                continue
            V, K = viewmats[c], Ks[c]
            x = V[0, 0] * means[n, 0] + V[0, 1] * means[n, 1] + V[0, 2] * means[n, 2] + V[0, 3]
            y = V[1, 0] * means[n, 0] + V[1, 1] * means[n, 1] + V[1, 2] * means[n, 2] + V[1, 3]
            z = V[2, 0] * means[n, 0] + V[2, 1] * means[n, 1] + V[2, 2] * means[n, 2] + V[2, 3]
            w, qx, qy, qz, norm = _camera_covariance(quats[n], scales[n], V, R, A, Sc)
            fx, fy = K[0, 0], K[1, 1]
            lxp, lxn, lyp, lyn = _fov_limits(K, width, height)
            sx, sy = x / z, y / z
            x_free = sx >= -lxn and sx <= lxp  # the clamp passes gradient to x (else tx = z * limit)
            y_free = sy >= -lyn and sy <= lyp
            tx = z * min(max(sx, -lxn), lxp)
            ty = z * min(max(sy, -lyn), lyp)
            j00, j02 = fx / z, -fx * tx / (z * z)
            j11, j12 = fy / z, -fy * ty / (z * z)

            # conic = inverse(cov2d + eps2d I): dL/dcov2d = -conic Gs conic, Gs the symmetric dL/dconic
            c0, c1, c2 = conics[c, n, 0], conics[c, n, 1], conics[c, n, 2]
            g0, g1, g2 = v_conics[c, n, 0], 0.5 * v_conics[c, n, 1], v_conics[c, n, 2]
            # P = Gs conic
            p00, p01 = g0 * c0 + g1 * c1, g0 * c1 + g1 * c2
            p10, p11 = g1 * c0 + g2 * c1, g1 * c1 + g2 * c2
            v00 = -(c0 * p00 + c1 * p10)
            v01 = -(c0 * p01 + c1 * p11)
            v11 = -(c1 * p01 + c2 * p11)
            # cov2d = J Sc J^T: dL/dJ = 2 V2 J Sc, dL/dSc = J^T V2 J (V2 = [[v00, v01], [v01, v11]])
            # J Sc rows (J has zeros at [0, 1] and [1, 0])
            js00 = j00 * Sc[0, 0] + j02 * Sc[2, 0]
            js01 = j00 * Sc[0, 1] + j02 * Sc[2, 1]
            js02 = j00 * Sc[0, 2] + j02 * Sc[2, 2]
            js10 = j11 * Sc[1, 0] + j12 * Sc[2, 0]
            js11 = j11 * Sc[1, 1] + j12 * Sc[2, 1]
            js12 = j11 * Sc[1, 2] + j12 * Sc[2, 2]
            vj00 = 2 * (v00 * js00 + v01 * js10)
            vj02 = 2 * (v00 * js02 + v01 * js12)
            vj11 = 2 * (v01 * js01 + v11 * js11)
            vj12 = 2 * (v01 * js02 + v11 * js12)
            # dL/dSc = J^T V2 J, J columns: col0 = (j00, 0), col1 = (0, j11), col2 = (j02, j12)
            a0, a1 = v00 * j00, v01 * j00  # V2 col0 * j00
            b0, b1 = v01 * j11, v11 * j11  # V2 col1 * j11
            e0, e1 = v00 * j02 + v01 * j12, v01 * j02 + v11 * j12  # V2 J col2
            G[0, 0] = j00 * a0
            G[0, 1] = j00 * b0
            G[0, 2] = j00 * e0
            G[1, 0] = j11 * a1
            G[1, 1] = j11 * b1
            G[1, 2] = j11 * e1
            G[2, 0] = j02 * a0 + j12 * a1
            G[2, 1] = j02 * b0 + j12 * b1
            G[2, 2] = j02 * e0 + j12 * e1

            # position: means2d, depth, and the Jacobian's dependence on (x, y, z)
            vmx, vmy = v_means2d[c, n, 0], v_means2d[c, n, 1]
            vx = fx / z * vmx
            vy = fy / z * vmy
            vz = -(fx * x * vmx + fy * y * vmy) / (z * z) + v_depths[c, n]
            vz += -fx / (z * z) * vj00 + 2 * fx * tx / (z * z * z) * vj02
            vz += -fy / (z * z) * vj11 + 2 * fy * ty / (z * z * z) * vj12
            vtx = -fx / (z * z) * vj02
            vty = -fy / (z * z) * vj12
            if x_free:
                vx += vtx
            else:
                vz += min(max(sx, -lxn), lxp) * vtx
            if y_free:
                vy += vty
            else:
                vz += min(max(sy, -lyn), lyp) * vty
            for i in range(3):
                v_means[n, i] += V[0, i] * vx + V[1, i] * vy + V[2, i] * vz

            # Sc = A A^T with A = R_cw R S: dL/dA = 2 G A (G symmetric); dL/d(R S) = R_cw^T dL/dA
            for i in range(3):
                for j in range(3):
                    dA[i, j] = 2 * (G[i, 0] * A[0, j] + G[i, 1] * A[1, j] + G[i, 2] * A[2, j])
            s = scales[n]
            for i in range(3):
                for j in range(3):
                    dRS = V[0, i] * dA[0, j] + V[1, i] * dA[1, j] + V[2, i] * dA[2, j]
                    v_scales[n, j] += dRS * R[i, j]
                    G[i, j] = dRS * s[j]  # G is now dL/dR
            _quat_grad(G, w, qx, qy, qz, norm, v_quats[n])
    return v_means, v_quats, v_scales


# ----------------------------------------------------------------------------------------------------
# 2D surfels
# ----------------------------------------------------------------------------------------------------


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _surfel_transform(mean, q, s, V, K, R, Rc, H):
    """Fill Rc = R_cw R(q) and H = K [s_u t_u, s_v t_v, mu_c]; returns (quaternion, norm, camera centre)."""
    w, x, y, z, norm = _rotmat(q, R)
    for i in range(3):
        for j in range(3):
            Rc[i, j] = V[i, 0] * R[0, j] + V[i, 1] * R[1, j] + V[i, 2] * R[2, j]
    mc0 = V[0, 0] * mean[0] + V[0, 1] * mean[1] + V[0, 2] * mean[2] + V[0, 3]
    mc1 = V[1, 0] * mean[0] + V[1, 1] * mean[1] + V[1, 2] * mean[2] + V[1, 3]
    mc2 = V[2, 0] * mean[0] + V[2, 1] * mean[1] + V[2, 2] * mean[2] + V[2, 3]
    for i in range(3):
        for j in range(3):
            if j == 2:
                col = K[i, 0] * mc0 + K[i, 1] * mc1 + K[i, 2] * mc2
            else:
                col = (K[i, 0] * Rc[0, j] + K[i, 1] * Rc[1, j] + K[i, 2] * Rc[2, j]) * s[j]
            H[i, j] = col
    return w, x, y, z, norm, mc0, mc1, mc2


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def project_2dgs_fwd(means, quats, scales, viewmats, Ks, width, height, near, far, radius_clip):
    """means2d [C, N, 2], ray_transforms [C, N, 3, 3], depths [C, N], normals [C, N, 3], radii."""
    C, N = viewmats.shape[0], means.shape[0]
    means2d = np.zeros((C, N, 2))
    transforms = np.zeros((C, N, 3, 3))
    depths = np.zeros((C, N))
    normals = np.zeros((C, N, 3))
    radii = np.zeros((C, N, 2), dtype=np.int32)
    for k in prange(C * N):
        c, n = k // N, k % N
        R = np.empty((3, 3))
        Rc = np.empty((3, 3))
        H = np.empty((3, 3))
        _, _, _, _, _, mc0, mc1, mc2 = _surfel_transform(means[n], quats[n], scales[n], viewmats[c], Ks[c],
                                                         R, Rc, H)
        # bounding box of the 1-sigma ellipse in closed form, with signs (1, 1, -1)
        dist = H[2, 0] * H[2, 0] + H[2, 1] * H[2, 1] - H[2, 2] * H[2, 2]
        if dist == 0:
            continue
        mx = (H[0, 0] * H[2, 0] + H[0, 1] * H[2, 1] - H[0, 2] * H[2, 2]) / dist
        my = (H[1, 0] * H[2, 0] + H[1, 1] * H[2, 1] - H[1, 2] * H[2, 2]) / dist
        sx = (H[0, 0] * H[0, 0] + H[0, 1] * H[0, 1] - H[0, 2] * H[0, 2]) / dist
        sy = (H[1, 0] * H[1, 0] + H[1, 1] * H[1, 1] - H[1, 2] * H[1, 2]) / dist
        rx = math.ceil(MAX_EXTENT_SIGMAS * math.sqrt(max(mx * mx - sx, 1e-4)))
        ry = math.ceil(MAX_EXTENT_SIGMAS * math.sqrt(max(my * my - sy, 1e-4)))
        if not (mc2 > near and mc2 < far):
            continue
        if not (rx > radius_clip or ry > radius_clip):
            continue
        if not _inside_image(mx, my, rx, ry, width, height):
            continue
        facing = -(Rc[0, 2] * mc0 + Rc[1, 2] * mc1 + Rc[2, 2] * mc2) > 0
        sign = 1.0 if facing else -1.0
        means2d[c, n, 0], means2d[c, n, 1] = mx, my
        for i in range(3):
            normals[c, n, i] = sign * Rc[i, 2]
            for j in range(3):
                transforms[c, n, i, j] = H[i, j]
        depths[c, n] = mc2
        radii[c, n, 0], radii[c, n, 1] = int(rx), int(ry)
    return means2d, transforms, depths, normals, radii


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def project_2dgs_bwd(means, quats, scales, viewmats, Ks, radii, v_means2d, v_transforms, v_depths,
                     v_normals):
    """dL/dmeans [N, 3], dL/dquats [N, 4], dL/dscales [N, 3] (the third scale gets none)."""
    C, N = viewmats.shape[0], means.shape[0]
    v_means = np.zeros((N, 3))
    v_quats = np.zeros((N, 4))
    v_scales = np.zeros((N, 3))
    for n in prange(N):
        R = np.empty((3, 3))
        Rc = np.empty((3, 3))
        H = np.empty((3, 3))
        vH = np.empty((3, 3))
        vWH = np.empty((3, 3))
        vRc = np.empty((3, 3))
        G = np.empty((3, 3))
        for c in range(C):
            if radii[c, n, 0] <= 0 or radii[c, n, 1] <= 0:
                continue
            V, K = viewmats[c], Ks[c]
            w, x, y, z, norm, mc0, mc1, mc2 = _surfel_transform(means[n], quats[n], scales[n], V, K, R, Rc, H)
            for i in range(3):
                for j in range(3):
                    vH[i, j] = v_transforms[c, n, i, j]
            # means2d = (sum_k s_k H0k H2k, sum_k s_k H1k H2k) / dist, dist = sum_k s_k H2k^2, s = (1, 1, -1)
            dist = H[2, 0] * H[2, 0] + H[2, 1] * H[2, 1] - H[2, 2] * H[2, 2]
            mx = (H[0, 0] * H[2, 0] + H[0, 1] * H[2, 1] - H[0, 2] * H[2, 2]) / dist
            my = (H[1, 0] * H[2, 0] + H[1, 1] * H[2, 1] - H[1, 2] * H[2, 2]) / dist
            vmx, vmy = v_means2d[c, n, 0], v_means2d[c, n, 1]
            for k in range(3):
                sk = -1.0 if k == 2 else 1.0
                vH[0, k] += vmx * sk * H[2, k] / dist
                vH[1, k] += vmy * sk * H[2, k] / dist
                vH[2, k] += (vmx * sk * H[0, k] + vmy * sk * H[1, k] - 2 * (vmx * mx + vmy * my) * sk * H[2, k]) / dist
            # H = K WH: dL/dWH = K^T dL/dH
            for i in range(3):
                for j in range(3):
                    vWH[i, j] = K[0, i] * vH[0, j] + K[1, i] * vH[1, j] + K[2, i] * vH[2, j]
            s = scales[n]
            for i in range(3):
                vRc[i, 0] = vWH[i, 0] * s[0]
                vRc[i, 1] = vWH[i, 1] * s[1]
            v_scales[n, 0] += Rc[0, 0] * vWH[0, 0] + Rc[1, 0] * vWH[1, 0] + Rc[2, 0] * vWH[2, 0]
            v_scales[n, 1] += Rc[0, 1] * vWH[0, 1] + Rc[1, 1] * vWH[1, 1] + Rc[2, 1] * vWH[2, 1]
            facing = -(Rc[0, 2] * mc0 + Rc[1, 2] * mc1 + Rc[2, 2] * mc2) > 0
            sign = 1.0 if facing else -1.0
            for i in range(3):
                vRc[i, 2] = sign * v_normals[c, n, i]
            vmc0, vmc1, vmc2 = vWH[0, 2], vWH[1, 2], vWH[2, 2] + v_depths[c, n]
            for i in range(3):
                v_means[n, i] += V[0, i] * vmc0 + V[1, i] * vmc1 + V[2, i] * vmc2
                for j in range(3):  # Rc = R_cw R: dL/dR = R_cw^T dL/dRc
                    G[i, j] = V[0, i] * vRc[0, j] + V[1, i] * vRc[1, j] + V[2, i] * vRc[2, j]
            _quat_grad(G, w, x, y, z, norm, v_quats[n])
    return v_means, v_quats, v_scales
