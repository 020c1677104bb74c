"""The page's two languages: English and Simplified Chinese.

Small on purpose: one dict of strings per language, a ``t`` function handed to every template,
the language taken from the ``lang`` cookie (the page's switch sets it) or else from
Accept-Language, and error messages translated by their stable ``code``. Server messages are
written in English with details such as a file's name or a number in them; the Chinese
versions are templates that take those details back out of the English text, so a translated
message keeps saying which file broke which limit. A code without a translation falls back to
the server's English words, never to nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

LANGS = ("en", "zh")
HTML_LANG = {"en": "en", "zh": "zh-CN"}
LANG_COOKIE = "lang"

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "app_name": "Qwen Edit Studio",
        "tagline": "Describe a change, get the edited image.",
        "skip": "Skip to the editor",
        "language": "Language",
        "settings": "Settings",
        "usage": "Usage",
        "st_title": "Providers",
        "st_simulated": "No provider key is set: the built-in simulator answers every job.",
        "st_routing": (
            "Jobs go to the cheapest healthy provider; one that keeps failing is taken out of "
            "rotation for a while (open circuit) and then gets one probe."
        ),
        "st_provider": "Provider",
        "st_state": "State",
        "st_price": "Price / image",
        "st_calls": "Calls",
        "st_errors": "Errors",
        "st_last_error": "Last error",
        "st_retry_in": "retry in {s} s",
        "state_healthy": "healthy",
        "state_open": "open",
        "state_half-open": "half-open",
        "state_disabled": "disabled",
        "us_title_mine": "Your usage",
        "us_title_team": "Team usage",
        "us_show_mine": "Show only mine",
        "us_show_team": "Show the whole team",
        "us_caption": "By day (UTC) and provider",
        "us_caption_team": "By day (UTC), user and provider",
        "us_day": "Day",
        "us_user": "User",
        "us_jobs": "Jobs",
        "us_succeeded": "Succeeded",
        "us_failed": "Failed",
        "us_images": "Images",
        "us_spend": "Spend (USD)",
        "us_empty": "No jobs yet.",
        "us_prices": "Prices per image:",
        "us_csv": "Download CSV",
        "back": "Back to the studio",
        "sign_in": "Sign-in needed",
        "sim_title": "Simulated results.",
        "sim_body_1": "No provider API key is set (",
        "sim_body_2": "), so jobs go to the built-in simulator: it inverts the first image's "
        "colours instead of editing it with the model.",
        "new_edit": "New edit",
        "drop_title": "Drop 1-3 images here or paste them",
        "choose": "Choose images",
        "camera": "Take a photo",
        "drop_help": "JPG, JPEG, PNG, BMP, WEBP, TIFF · at most 10 MB each · 384-3072 px per side",
        "order_help": "Order matters: the prompt can say “image 1”, “image 2”, “image 3”.",
        "chosen_images": "Chosen images",
        "prompt_label": "What should change?",
        "examples": "Examples",
        "tokens": "{used} / {limit} tokens",
        "shortcut": "Ctrl+Enter sends",
        "submit": "Edit",
        "sending": "Sending…",
        "model": "Model",
        "more_options": "More options",
        "opt_n": "Number of images (1-6)",
        "opt_negative": "Negative prompt: what to avoid",
        "opt_size": "Output size (width x height, 512-2048)",
        "opt_size_hint": "Empty: close to the input's shape. Only with 1 image.",
        "opt_seed": "Seed (0-2147483647)",
        "opt_seed_hint": "Empty: random.",
        "opt_extend": "Rewrite the prompt for better results",
        "opt_watermark": "Add the “Qwen-Image” watermark",
        "mask": "Mask",
        "mask_help": "Paint over the part of image 1 that should change; the rest stays as it is.",
        "mask_open": "Paint a mask on image 1",
        "mask_close": "Hide the mask painter",
        "mask_none": "No mask: the model may change the whole image.",
        "mask_set": "Mask painted: only the painted area is edited.",
        "mask_brush": "Brush",
        "mask_eraser": "Eraser",
        "mask_size": "Brush size",
        "mask_clear": "Clear",
        "mask_invert": "Invert",
        "mask_canvas": "Mask over image 1: paint with the mouse, a pen or a finger",
        "mask_unavailable": "The browser cannot show this image, so no mask can be painted on it.",
        "history": "History",
        "counts": "{running} running · {completed} completed · keeps the last {limit}",
        "history_full": "Your history is full: the next job removes the oldest finished one.",
        "empty": "No edits yet. Add an image and describe a change.",
        "status_queued": "Queued",
        "status_running": "Running",
        "status_succeeded": "Done",
        "status_failed": "Failed",
        "status_canceled": "Canceled",
        "seconds": "{n} s",
        "about": "about {n} s",
        "progress": "Progress",
        "input_n": "Input {n}",
        "result_n": "Edited result {n}",
        "view": "View and compare",
        "download": "Download",
        "edit_result": "Edit this result",
        "copy_prompt": "Copy prompt",
        "retry": "Retry",
        "delete": "Delete",
        "confirm_delete": "Delete this job and its images?",
        "qr_alt": "QR code that opens this result on a phone",
        "qr_caption": "Scan to take it home (valid {n} min)",
        "phone_link": "Link for your phone",
        "compare": "Before and after",
        "before": "Before",
        "after": "After",
        "close": "Close",
        "compare_slider": "Comparison: drag or use the arrow keys",
        "idle_warn": "Still there? The screen starts over in {n} s.",
        "idle_continue": "Touch the screen to continue.",
        "start_over": "Start over",
        "kiosk_note": "Your pictures are deleted when you leave or tap “Start over”.",
        # settings page
        "tokens_title": "Personal API tokens",
        "tokens_help": "Scripts send a token as “Authorization: Bearer <token>” to /api/… and to "
        "the EvoLink-compatible /v1/…. The token is shown once, right after it is created.",
        "token_name": "Token name",
        "token_create": "Create token",
        "token_once": "Copy this token now: it will not be shown again.",
        "copy": "Copy",
        "copied": "Copied.",
        "revoke": "Revoke",
        "confirm_revoke": "Revoke this token? Scripts using it stop working at once.",
        "no_tokens": "No tokens yet.",
        "created": "created {when}",
        "last_used": "last used {when}",
        "never_used": "never used",
        "token_created": "Token “{name}” created.",
        "token_revoked": "Token revoked.",
        # said by the page's script
        "err_count": "At most {max} images: {n} not added.",
        "err_format": "{name} is not an allowed format (JPG, JPEG, PNG, BMP, WEBP, TIFF).",
        "err_size": "{name} is {mb}; each image may be at most 10 MB.",
        "err_dims": "{name} is {w}×{h} px; each side must be 384-3072 px.",
        "err_no_images": "Add at least one image (1 to 3).",
        "err_prompt_empty": "The prompt is empty: describe the edit you want.",
        "err_http": "The server refused the request (HTTP {status}).",
        "err_network": "Could not reach the studio. Check the connection and try again.",
        "err_load_result": "Could not load the result image.",
        "err_clipboard": "Copying is not allowed here; select the text and copy it yourself.",
        "pasted": "pasted image",
        "image_n": "Image {n}",
        "remove": "Remove",
        "remove_n": "Remove image {n}",
        "earlier": "Earlier",
        "later": "Later",
        "earlier_n": "Move image {n} earlier",
        "later_n": "Move image {n} later",
        "added": "{n} image(s) added; {total} of 3 chosen.",
        "removed": "Image removed; {total} of 3 chosen.",
        "moved": "Moved: it is now image {n}.",
        "job_started": "Edit sent; it is shown in the history.",
        "job_done": "An edit finished.",
        "job_failed": "An edit failed: {reason}",
        "prompt_copied": "Prompt copied.",
        "result_added": "The result was added as image {n}.",
        "mask_cleared": "Image 1 changed, so the mask was cleared.",
        "preset_used": "Example “{name}” put in the prompt.",
    },
    "zh": {
        "app_name": "Qwen 图像编辑工作室",
        "tagline": "描述想要的修改,得到编辑好的图片。",
        "skip": "跳到编辑区",
        "language": "语言",
        "settings": "设置",
        "usage": "用量",
        "st_title": "服务商",
        "st_simulated": "没有设置服务商密钥:所有任务都由内置模拟器处理。",
        "st_routing": (
            "任务交给最便宜且正常的服务商;持续出错的服务商会暂时移出轮换(熔断),之后放行一次试探。"
        ),
        "st_provider": "服务商",
        "st_state": "状态",
        "st_price": "每张价格",
        "st_calls": "调用",
        "st_errors": "错误",
        "st_last_error": "最近的错误",
        "st_retry_in": "{s} 秒后重试",
        "state_healthy": "正常",
        "state_open": "熔断中",
        "state_half-open": "试探中",
        "state_disabled": "已停用",
        "us_title_mine": "我的用量",
        "us_title_team": "团队用量",
        "us_show_mine": "只看我的",
        "us_show_team": "查看整个团队",
        "us_caption": "按日期(UTC)和服务商",
        "us_caption_team": "按日期(UTC)、用户和服务商",
        "us_day": "日期",
        "us_user": "用户",
        "us_jobs": "任务",
        "us_succeeded": "成功",
        "us_failed": "失败",
        "us_images": "图片",
        "us_spend": "花费(美元)",
        "us_empty": "还没有任务。",
        "us_prices": "每张图片的价格:",
        "us_csv": "下载 CSV",
        "back": "返回工作室",
        "sign_in": "需要登录",
        "sim_title": "模拟结果。",
        "sim_body_1": "没有设置服务商 API 密钥(",
        "sim_body_2": "),任务交给内置模拟器处理:它把第一张图片的颜色反相,而不是用模型编辑。",
        "new_edit": "新的编辑",
        "drop_title": "把 1-3 张图片拖到这里,或直接粘贴",
        "choose": "选择图片",
        "camera": "拍照",
        "drop_help": "JPG、JPEG、PNG、BMP、WEBP、TIFF · 每张最多 10 MB · 每边 384-3072 像素",
        "order_help": "顺序有意义:提示词里可以说“图1”“图2”“图3”。",
        "chosen_images": "已选图片",
        "prompt_label": "要怎么改?",
        "examples": "示例",
        "tokens": "{used} / {limit} 个 token",
        "shortcut": "Ctrl+Enter 发送",
        "submit": "编辑",
        "sending": "发送中…",
        "model": "模型",
        "more_options": "更多选项",
        "opt_n": "生成数量(1-6)",
        "opt_negative": "反向提示词:不想要的内容",
        "opt_size": "输出尺寸(宽x高,512-2048)",
        "opt_size_hint": "留空:接近输入图片的比例。仅在生成 1 张时可用。",
        "opt_seed": "随机种子(0-2147483647)",
        "opt_seed_hint": "留空:随机。",
        "opt_extend": "智能改写提示词,效果更好",
        "opt_watermark": "添加“Qwen-Image”水印",
        "mask": "蒙版",
        "mask_help": "在图1上涂抹需要修改的区域,其余部分保持不变。",
        "mask_open": "在图1上绘制蒙版",
        "mask_close": "收起蒙版绘制",
        "mask_none": "没有蒙版:模型可能修改整张图片。",
        "mask_set": "已绘制蒙版:只编辑涂抹的区域。",
        "mask_brush": "画笔",
        "mask_eraser": "橡皮擦",
        "mask_size": "画笔大小",
        "mask_clear": "清除",
        "mask_invert": "反选",
        "mask_canvas": "图1上的蒙版:用鼠标、手写笔或手指涂抹",
        "mask_unavailable": "浏览器无法显示这张图片,因此不能在上面绘制蒙版。",
        "history": "历史记录",
        "counts": "{running} 运行中 · {completed} 已完成 · 最多保留 {limit} 条",
        "history_full": "历史记录已满:下一个任务会删除最早完成的一条。",
        "empty": "还没有编辑。添加图片并描述要做的修改。",
        "status_queued": "排队中",
        "status_running": "运行中",
        "status_succeeded": "已完成",
        "status_failed": "失败",
        "status_canceled": "已取消",
        "seconds": "{n} 秒",
        "about": "预计约 {n} 秒",
        "progress": "进度",
        "input_n": "输入 {n}",
        "result_n": "编辑结果 {n}",
        "view": "查看与对比",
        "download": "下载",
        "edit_result": "继续编辑此结果",
        "copy_prompt": "复制提示词",
        "retry": "重试",
        "delete": "删除",
        "confirm_delete": "删除这个任务及其图片?",
        "qr_alt": "在手机上打开此结果的二维码",
        "qr_caption": "扫码带走({n} 分钟内有效)",
        "phone_link": "手机链接",
        "compare": "前后对比",
        "before": "原图",
        "after": "结果",
        "close": "关闭",
        "compare_slider": "对比位置:拖动或使用方向键",
        "idle_warn": "还在吗?屏幕将在 {n} 秒后重新开始。",
        "idle_continue": "触摸屏幕即可继续。",
        "start_over": "重新开始",
        "kiosk_note": "你离开或点“重新开始”后,图片会被删除。",
        "tokens_title": "个人 API 令牌",
        "tokens_help": "脚本以“Authorization: Bearer <令牌>”访问 /api/… 和兼容 EvoLink 的 /v1/…。"
        "令牌只在创建后显示一次。",
        "token_name": "令牌名称",
        "token_create": "创建令牌",
        "token_once": "请立即复制此令牌:它不会再次显示。",
        "copy": "复制",
        "copied": "已复制。",
        "revoke": "撤销",
        "confirm_revoke": "撤销这个令牌?使用它的脚本会立即失效。",
        "no_tokens": "还没有令牌。",
        "created": "创建于 {when}",
        "last_used": "最近使用 {when}",
        "never_used": "从未使用",
        "token_created": "令牌“{name}”已创建。",
        "token_revoked": "令牌已撤销。",
        "err_count": "最多 {max} 张图片:{n} 张没有添加。",
        "err_format": "{name} 不是允许的格式(JPG、JPEG、PNG、BMP、WEBP、TIFF)。",
        "err_size": "{name} 有 {mb};每张图片最多 10 MB。",
        "err_dims": "{name} 为 {w}×{h} 像素;每边须在 384-3072 像素之间。",
        "err_no_images": "请至少添加一张图片(1 到 3 张)。",
        "err_prompt_empty": "提示词为空:请描述想要的修改。",
        "err_http": "服务器拒绝了请求(HTTP {status})。",
        "err_network": "无法连接工作室。请检查网络后重试。",
        "err_load_result": "无法加载结果图片。",
        "err_clipboard": "这里不允许复制;请选中文字后自行复制。",
        "pasted": "粘贴的图片",
        "image_n": "图 {n}",
        "remove": "移除",
        "remove_n": "移除图 {n}",
        "earlier": "前移",
        "later": "后移",
        "earlier_n": "把图 {n} 前移",
        "later_n": "把图 {n} 后移",
        "added": "已添加 {n} 张图片;已选 {total}/3 张。",
        "removed": "已移除图片;已选 {total}/3 张。",
        "moved": "已移动:现在是图 {n}。",
        "job_started": "编辑已发送,显示在历史记录中。",
        "job_done": "一个编辑已完成。",
        "job_failed": "一个编辑失败:{reason}",
        "prompt_copied": "提示词已复制。",
        "result_added": "结果已添加为图 {n}。",
        "mask_cleared": "图1已更换,蒙版已清除。",
        "preset_used": "已把示例“{name}”放入提示词。",
    },
}

# Strings each page's script needs (it reads them from a JSON block in the page); only those,
# to keep the first load light.
CLIENT_KEYS: dict[str, tuple[str, ...]] = {
    "studio": (
        "err_count", "err_format", "err_size", "err_dims", "err_no_images", "err_prompt_empty",
        "err_http", "err_network", "err_load_result", "err_clipboard", "pasted", "image_n",
        "remove", "remove_n", "earlier", "later", "earlier_n", "later_n", "added", "removed",
        "moved", "job_started", "job_done", "job_failed", "prompt_copied", "result_added",
        "mask_cleared", "preset_used", "submit", "sending", "idle_warn", "mask_set", "mask_none",
        "mask_open", "mask_close",
    ),
    "settings": (
        "err_http", "copied", "revoke", "confirm_revoke", "no_tokens", "created", "last_used",
        "never_used", "token_created", "token_revoked",
    ),
}  # fmt: skip

# Refusals answered before the app's error handler runs (the size cap and the CSRF check are
# middleware), so the server cannot translate them: the page does, by code.
CLIENT_ERRORS = ("request_too_large", "cross_site_request")

# Tested prompts for the model's strengths, in both languages (issue #6, item 5). The cat captain
# is the product page's own example.
PRESETS: list[dict[str, str]] = [
    {
        "id": "background",
        "en_name": "Background swap",
        "zh_name": "换背景",
        "en": "Replace the background with a sunny beach at golden hour. Keep the person, "
        "their edges and the lighting on them unchanged.",
        "zh": "把背景换成金色夕阳下的海滩,人物、边缘和人物身上的光线保持不变。",
    },
    {
        "id": "object",
        "en_name": "Replace an object",
        "zh_name": "替换物体",
        "en": "Replace the cup on the table with a small potted cactus of the same size, in the "
        "same place, lit the same way.",
        "zh": "把桌上的杯子换成一盆同样大小的小仙人掌,位置不变,光线一致。",
    },
    {
        "id": "text",
        "en_name": "Change text",
        "zh_name": "改文字",
        "en": "Change the text on the sign from “SALE” to “OPEN”, keeping the same font, colour, "
        "size and perspective.",
        "zh": "把招牌上的文字“SALE”改成“OPEN”,保持原来的字体、颜色、大小和透视。",
    },
    {
        "id": "style",
        "en_name": "Style transfer",
        "zh_name": "风格迁移",
        "en": "Turn this photo into a watercolour painting with soft washes and visible paper "
        "texture; keep the composition and the faces recognisable.",
        "zh": "把这张照片变成水彩画,晕染柔和,纸张纹理可见;构图不变,人物面孔可辨认。",
    },
    {
        "id": "compose",
        "en_name": "Combine images",
        "zh_name": "多图合成",
        "en": "Put the person from image 1 into the scene of image 2, matching the light, the "
        "shadows and the perspective.",
        "zh": "把图1中的人物放进图2的场景里,光线、阴影和透视保持一致。",
    },
    {
        "id": "cat-captain",
        "en_name": "Cat captain",
        "zh_name": "猫船长",
        "en": "A cute fluffy cat captain sitting in a spaceship commander chair, wearing a small "
        "headset and a futuristic collar. Pixar animation style, 3D render, vibrant colors, soft "
        "volumetric lighting. The cockpit is cozy with round shapes, galaxy background outside "
        "the window. Octane render, high fidelity, adorable expression.",
        "zh": "一只可爱的毛茸茸的猫船长坐在宇宙飞船的指挥椅上,戴着小耳机和充满未来感的项圈。"
        "皮克斯动画风格,3D 渲染,色彩鲜艳,柔和的体积光。驾驶舱圆润舒适,窗外是银河背景。"
        "Octane 渲染,高保真,表情可爱。",
    },
]

# Chinese error messages by code. A plain string replaces the message; a list of
# (pattern, template) pairs takes details (numbers, a file's label) from the English message
# first, and a code's last plain string is used when no pattern matches.
_LABEL = re.compile(r'image (\d+) \("([^"]*)"\)')
ErrorRule = str | list[tuple[str, str] | str]
ERRORS_ZH: dict[str, ErrorRule] = {
    "prompt_empty": "提示词为空:请描述想要的修改。",
    "prompt_invalid": "提示词无效(包含不允许的字符,或不是文本)。",
    "prompt_too_long": [
        (
            r"is (?P<n>\d+) tokens long; the limit is (?P<max>\d+)",
            "提示词有 {n} 个 token,上限是 {max} 个。",
        ),
        "提示词太长,上限是 2000 个 token。",
    ],
    "no_images": "请至少添加一张图片(1 到 3 张)。",
    "too_many_images": [
        (r"^(?P<n>\d+) images", "发送了 {n} 张图片;最多允许 3 张。"),
        "图片太多;最多允许 3 张。",
    ],
    "invalid_images": "字段 images 必须是文件。",
    "empty_file": [(r"^(?P<label>.+?) is empty", "{label}是空文件(0 字节)。"), "文件是空的。"],
    "file_too_large": [
        (r"^(?P<label>.+?) (is|has)", "{label}太大;每张图片最多 10 MB。"),
        "图片太大;每张图片最多 10 MB。",
    ],
    "bad_dimensions": [
        (
            r"^(?P<label>.+?) is (?P<w>\d+)x(?P<h>\d+) px",
            "{label}为 {w}×{h} 像素;每边须在 384 到 3072 像素之间。",
        ),
        "图片尺寸不符合要求;每边须在 384 到 3072 像素之间。",
    ],
    "unsupported_color_mode": [
        (
            r"^(?P<label>.+?) uses",
            "{label}的颜色模式无法转换;请另存为 8 位 RGB 或灰度图片后重试。",
        ),
        "图片的颜色模式无法转换;请另存为 8 位 RGB 或灰度图片后重试。",
    ],
    "unsupported_format": [
        (
            r"^(?P<label>.+?) (is|was|has|looks|could)",
            "{label}不是允许的格式;允许 JPG/JPEG、PNG、BMP、WEBP、TIFF。",
        ),
        "不是允许的图片格式;允许 JPG/JPEG、PNG、BMP、WEBP、TIFF。",
    ],
    "decompression_bomb": [
        (
            r"^(?P<label>.+?) declares",
            "{label}声明的尺寸远超允许范围(可能是解压炸弹),未解码即被拒绝;"
            "每边须在 384 到 3072 像素之间。",
        ),
        "图片声明的尺寸远超允许范围,已被拒绝。",
    ],
    "corrupt_image": [
        (
            r"^(?P<label>.+?) looks like",
            "{label}无法解码:文件不完整或已损坏。请重新保存或导出后重试。",
        ),
        "图片无法解码:文件不完整或已损坏。",
    ],
    "invalid_model": "未知模型;请选择 qwen-image-edit 或 qwen-image-edit-plus。",
    "invalid_option": [
        (r"^Options (?P<names>.+) need", "选项 {names} 需要使用 qwen-image-edit-plus 模型。"),
        (
            r"^(?P<name>\w+) must be a whole number from (?P<lo>\d+) to (?P<hi>\d+)",
            "{name} 必须是 {lo} 到 {hi} 之间的整数。",
        ),
        (r"^negative_prompt is longer", "反向提示词超过 500 个字符(上限)。"),
        (r"^size must look like", "尺寸格式应为 1024x1024,每边 512 到 2048 像素。"),
        (r"^size can only be set when n is 1", "只有生成数量为 1 时才能设置尺寸。"),
        (r"^(?P<name>\w+) must be true or false", "{name} 只能是 true 或 false。"),
        "选项无效。",
    ],
    "rate_limited": [
        (
            r"the limit is (?P<n>\d+) per minute per user. Try again in (?P<s>\d+) seconds",
            "新任务太多:每个用户每分钟最多 {n} 个。请 {s} 秒后再试。",
        ),
        (
            r"the limit is (?P<n>\d+) per minute per address. Try again in (?P<s>\d+) seconds",
            "新任务太多:每个地址每分钟最多 {n} 个。请 {s} 秒后再试。",
        ),
        "新任务太多,请稍后再试。",
    ],
    "too_many_running": [
        (
            r"You already have (?P<n>\d+) jobs queued or running; the limit is (?P<max>\d+)",
            "你已有 {n} 个任务在排队或运行;上限是 {max} 个。请等其中一个完成。",
        ),
        "排队或运行中的任务太多。请等其中一个完成。",
    ],
    "history_full": [
        (
            r"All (?P<n>\d+) jobs",
            "历史记录中的全部 {n} 个任务都还在运行;请等一个完成后再开始新的。",
        ),
        "历史记录中的任务都还在运行;请等一个完成后再开始新的。",
    ],
    "not_found": [
        (r"not valid or has expired", "这个链接无效或已过期。"),
        (r"No such file", "没有这个文件。"),
        (r"No such token", "没有这个令牌。"),
        "没有这个任务。",
    ],
    "invalid_mask": [
        (r"^The mask is a (?P<fmt>\w+) file", "蒙版是 {fmt} 文件;必须是灰度 PNG。"),
        (
            r"^The mask is (?P<w>\d+)\D(?P<h>\d+) px; it must be the size of the first image, "
            r"(?P<fw>\d+)\D(?P<fh>\d+) px",
            "蒙版为 {w}×{h} 像素;必须与第一张图片一样大,即 {fw}×{fh} 像素。",
        ),
        (r"all black", "蒙版全是黑色:请在需要修改的地方涂白。"),
        "蒙版无效;必须是与第一张图片同样大小的灰度 PNG。",
    ],
    "not_retryable": "只有失败或已取消的任务才能重试。",
    "unauthorized": "需要登录:请通过公司的登录入口访问,或使用个人 API 令牌。",
    "forbidden": "令牌只能在设置页面管理,不能用令牌来管理。",
    "request_too_large": "请求超过了上限。最多发送 3 张图片,每张最多 10 MB。",
    "cross_site_request": "这个请求来自其他网站,已被拒绝(CSRF 防护)。",
    "invalid_request": [(r"^(?P<detail>.+)$", "请求无效:{detail}"), "请求无效。"],
    # why a job failed (the worker and the providers)
    "content_policy_violation": "服务商的安全过滤拦截了这个请求。请换一个提示词或图片。",
    "invalid_parameters": "服务商拒绝了请求的参数。",
    "image_processing_error": "服务商无法读取其中一张输入图片。",
    "image_dimension_mismatch": "输入图片的尺寸不符合模型的要求。",
    "request_cancelled": "任务已在服务商处取消。",
    "generation_failed_no_content": "模型没有生成图片。",
    "service_error": "服务商内部出错。",
    "generation_timeout": "服务商生成超时。",
    "resource_exhausted": "服务商目前容量不足。",
    "quota_exceeded": "服务商的配额已用完。",
    "service_unavailable": "服务商暂时不可用。",
    "resource_not_found": "服务商丢失了这个任务的资源。",
    "unknown_error": "服务商因未知原因失败。",
    "model_unavailable": "服务商目前无法使用这个模型。",
    "upstream_error": "服务商自身的上游出错。",
    "upstream_unreachable": "无法连接服务商。",
    "upstream_unavailable": "服务商暂时不可用。",
    "upstream_rate_limited": "服务商限制了请求频率。",
    "upstream_unauthorized": "服务商拒绝了工作室的 API 密钥。",
    "upstream_forbidden": "服务商拒绝了访问。",
    "upstream_no_credit": "服务商账户余额不足。",
    "upstream_rejected": "服务商拒绝了这个请求。",
    "bad_upstream_answer": "服务商返回了无效的应答。",
    "result_expired": "结果链接在下载前已过期。",
    "result_too_large": "服务商返回的结果图片太大。",
    "bad_result": "服务商返回的结果不是有效的图片。",
    "download_failed": "下载结果失败。",
    "no_provider": "没有可用的服务商。",
    "submit_unknown": "工作室在发送这个任务时停止了,无法确定服务商是否收到。任务没有被再次发送,"
    "因此不会重复计费;按“重试”可以重新发送。",
    "timeout": [
        (r"within (?P<n>\d+) s", "上游超时:任务没有在 {n} 秒内完成。"),
        "上游超时:任务没有按时完成。",
    ],
}


def parse_accept_language(header: str | None) -> str | None:
    """The first supported language in an Accept-Language header, by its q weights."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGS and quality > 0:
            ranked.append((-quality, index, primary))
    return min(ranked)[2] if ranked else None


def pick_lang(cookie: str | None, accept_language: str | None) -> str:
    """The ``lang`` cookie if it names a language we have, else Accept-Language, else English."""
    if cookie in LANGS:
        return cookie  # type: ignore[return-value]
    return parse_accept_language(accept_language) or "en"


def request_lang(request: Any) -> str:
    """The language of a Starlette request (cookie first, then Accept-Language)."""
    return pick_lang(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


def asked_for_language(request: Any) -> bool:
    """True when the request said which language it wants (scripts usually do not)."""
    return LANG_COOKIE in request.cookies or bool(request.headers.get("accept-language"))


def translator(lang: str) -> Callable[..., str]:
    """``t(key, **values)``: the string in ``lang`` (English if missing), filled with values."""
    table = STRINGS.get(lang, STRINGS["en"])

    def t(key: str, **values: Any) -> str:
        text = table.get(key) or STRINGS["en"].get(key, key)
        return text.format(**values) if values else text

    return t


def client_strings(lang: str, page: str) -> dict[str, Any]:
    """What a page's script needs: its strings and the translations of the refusals the server
    cannot translate itself (every other error arrives translated, see app/main.py)."""
    t = translator(lang)
    errors: dict[str, str] = {}
    if lang == "zh":
        errors = {code: str(ERRORS_ZH[code]) for code in CLIENT_ERRORS}
    keys = CLIENT_KEYS.get(page, ())
    return {"lang": lang, "t": {k: t(k) for k in keys}, "errors": errors}


def script_json(value: Any) -> str:
    """JSON safe inside a <script type="application/json"> element, UTF-8 kept as is."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _zh_label(match: re.Match[str]) -> str:
    return f"图 {match.group(1)}(“{match.group(2)}”)"


def error_message(code: str | None, message: str, lang: str) -> str:
    """``message`` (the server's English words for ``code``) in ``lang``; as it was if there is
    no translation for that code."""
    if lang != "zh" or not code or code not in ERRORS_ZH:
        return message
    rule = ERRORS_ZH[code]
    if isinstance(rule, str):
        return rule
    fallback = message
    for item in rule:
        if isinstance(item, str):
            fallback = item
            continue
        pattern, template = item
        found = re.search(pattern, message)
        if found:
            values = {k: _LABEL.sub(_zh_label, v or "") for k, v in found.groupdict().items()}
            return template.format(**values)
    return fallback


def presets(lang: str) -> list[dict[str, str]]:
    """The preset library as the page shows it: name and prompt in ``lang``."""
    key = "zh" if lang == "zh" else "en"
    return [{"id": p["id"], "name": p[f"{key}_name"], "prompt": p[key]} for p in PRESETS]
